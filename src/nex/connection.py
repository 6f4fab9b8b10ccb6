"""How node, agents and CLI connect to NATS: one set of options, all nats-py supports."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import weakref
from pathlib import Path
from dataclasses import asdict, dataclass, field
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.js.errors import ServiceUnavailableError

from nex.api import natsjwt

log = logging.getLogger("nex.connection")

PING_INTERVAL_S = 2


@dataclass(frozen=True)
class ConnectOptions:
    servers: list[str] = field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    creds: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkey_seed_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if (self.user is None) != (self.password is None):
            raise ValueError("--user and --password go together")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")

    @classmethod
    def from_url(cls, url: str | None, **kwargs: Any) -> ConnectOptions:
        url = url or os.environ.get("NATS_URL") or "nats://127.0.0.1:4222"
        return cls(servers=[u.strip() for u in url.split(",") if u.strip()], **kwargs)

    def with_name(self, name: str) -> ConnectOptions:
        return ConnectOptions(**{**asdict(self), "name": name})

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ConnectOptions:
        return cls(**json.loads(text))

    def _tls(self) -> ssl.SSLContext | None:
        uses_tls = any(s.startswith("tls://") for s in self.servers)
        if not (self.tls_ca or self.tls_cert or uses_tls):
            return None
        context = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        return context

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        args: dict[str, Any] = {"servers": self.servers}
        if self.name:
            args["name"] = self.name
        if self.creds:
            args["user_credentials"] = self.creds
            inbox = confined_inbox_prefix(self.creds)
            if inbox:
                args["inbox_prefix"] = inbox
        if self.user is not None:
            args["user"], args["password"] = self.user, self.password
        if self.token:
            args["token"] = self.token
        if self.nkey_seed_file:
            args["nkeys_seed"] = self.nkey_seed_file
        tls = self._tls()
        if tls:
            args["tls"] = tls
        return args


def confined_inbox_prefix(creds: str) -> str | None:
    """The private inbox prefix a creds file's user is confined to, if it is: a user that may
    subscribe to ``_INBOX.<x>.>`` but not to ``_INBOX.>`` gets no reply on nats-py's default
    inbox (a namespace client of ``nex creds``, a workload). None for any other user."""
    try:
        text = Path(creds).read_text()
    except OSError:
        return None  # nats-py reports the unreadable file as it connects
    lines = text.splitlines()
    try:
        token = lines[lines.index("-----BEGIN NATS USER JWT-----") + 1].strip()
        allowed = natsjwt.decode_claims(token)["nats"]["sub"]["allow"]
    except (ValueError, IndexError, KeyError, TypeError):
        return None  # not a creds file of a user with subscribe permissions: nats-py's default
    if not isinstance(allowed, list) or "_INBOX.>" in allowed or ">" in allowed:
        return None
    inboxes = [s.removesuffix(".>") for s in allowed if isinstance(s, str)
               and s.startswith("_INBOX.") and s.endswith(".>") and s.count(".") == 2]
    return inboxes[0] if len(inboxes) == 1 else None


async def connect(options: ConnectOptions, connect_attempts: int = 3, **extra: Any) -> Client:
    """A connected client: a few tries to connect at first, then reconnects for ever.

    nats-py applies ``max_reconnect_attempts`` to the first connect too, so -1 would
    retry an unreachable server for ever; the limit is lifted once connected.

    Servers are tried in the order given, not shuffled: a node lists the server
    nearest to it first and the rest of the cluster as fallbacks. A server that
    stops answering (frozen, or cut off without a reset) is left once two PINGs go
    unanswered, within about 6 s; nats-py's default (a PING every 120 s) takes 6 minutes.
    """
    nc = Client()

    async def on_error(exc: Exception) -> None:
        # nats-py's default prints a traceback for every failed connect attempt.
        log.warning("NATS: %s", exc or type(exc).__name__)

    async def on_disconnected() -> None:
        if not (nc.is_closed or nc.is_draining):
            log.warning("disconnected from NATS")

    async def on_reconnected() -> None:
        log.info("reconnected to NATS at %s", nc.connected_url.netloc if nc.connected_url else "?")

    kwargs: dict[str, Any] = {"connect_timeout": 2, "reconnect_time_wait": 0.5,
                              "ping_interval": PING_INTERVAL_S, "max_outstanding_pings": 2,
                              "max_reconnect_attempts": connect_attempts, "dont_randomize": True, "error_cb": on_error,
                              "disconnected_cb": on_disconnected, "reconnected_cb": on_reconnected}
    kwargs.update(options.kwargs())
    kwargs.update(extra)
    await nc.connect(**kwargs)
    if "max_reconnect_attempts" not in extra:
        nc.options["max_reconnect_attempts"] = -1
    return nc


async def flush_subscriptions(nc: Client) -> None:
    """Return once the server has every subscription made so far.

    nats-py (2.16) writes flush()'s PING straight to the socket, possibly ahead of
    SUBs its flusher task has not written yet, so one PONG proves nothing under
    load. By the first PONG the flusher has run; the second PING follows the SUBs.

    Callers at the same time share one such round trip: a caller that comes while
    a round is under way waits for the next one, which starts after its SUBs were
    queued. An agent loading 32 functions at once then sends a few PINGs, not 64.
    """
    rounds = _flush_rounds.get(nc)
    if rounds is None:
        rounds = _flush_rounds[nc] = _FlushRounds(nc)
    await rounds.join()


class _FlushRounds:
    """The flush round trips of one connection; see :func:`flush_subscriptions`."""

    def __init__(self, nc: Client) -> None:
        self._nc = weakref.ref(nc)  # the value of a weak-keyed dict must not hold its key
        self._next: asyncio.Future[None] | None = None
        self._running: asyncio.Task[None] | None = None

    async def join(self) -> None:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            self._next.add_done_callback(_retrieve)  # every waiter may be gone when it fails
        waiting = self._next
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().create_task(self._run())
        await asyncio.shield(waiting)

    async def _run(self) -> None:
        while (this_round := self._next) is not None:
            self._next = None
            nc = self._nc()
            try:
                if nc is None:
                    raise ConnectionError("the NATS connection is gone")
                await nc.flush()
                await nc.flush()
            except Exception as exc:  # handed to the callers of this round
                this_round.set_exception(exc)
            else:
                this_round.set_result(None)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


_flush_rounds: weakref.WeakKeyDictionary[Client, _FlushRounds] = weakref.WeakKeyDictionary()


T = TypeVar("T")


async def while_jetstream_wakes(action: Callable[[], Awaitable[T]], patience_s: float = 60.0) -> T:
    """``action()``, tried again while JetStream does not answer yet (a cluster still electing
    its leaders), with a growing pause, for up to ``patience_s``; then its error is raised."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    delay = 0.25
    while True:
        try:
            return await action()
        except (asyncio.TimeoutError, ServiceUnavailableError) as exc:
            if loop.time() + delay > deadline:
                raise
            log.warning("JetStream did not answer (%s); trying again", type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 4.0)
