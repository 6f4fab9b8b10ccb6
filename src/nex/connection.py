"""How node, agents and CLI connect to NATS: one set of options, all nats-py supports."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import ssl
import weakref
from pathlib import Path
from dataclasses import asdict, dataclass, field
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from nats.aio.client import Client
from nats.js.errors import ServiceUnavailableError

from nex.api import natsjwt

log = logging.getLogger("nex.connection")

PING_INTERVAL_S = 2
NATS_SCHEMES = ("nats", "tls", "ws", "wss")
CLIENT_PORT = 4222  # nats-server's default port for clients
MONITORING_PORT = 8222  # its usual HTTP monitoring port: the port a browser shows, not the clients'
# A connect not done after this long is checked alongside (check_server): a port where nothing answers
# as NATS is then reported at once instead of after every try's time-out.
CHECK_AFTER_S = 0.1
# How long a port that accepted a connection is given to greet with INFO by a command (fail_fast), at
# least; more on a slow link (a few times the time the TCP connect took). A NATS server sends INFO as
# soon as it accepts.
GREETING_WAIT_S = 0.4


class BadServerUrl(ValueError):
    """A server URL of a scheme NATS does not speak (``http://host:8222``); ``corrected`` is the
    URL most likely meant."""

    def __init__(self, url: str, corrected: str, port: int | None = None) -> None:
        super().__init__(f"{url} is not a NATS URL: NATS URLs start with nats:// (or tls://, ws://, wss://); "
                         f"use {corrected}{monitoring_port_note(port)}")
        self.url, self.corrected = url, corrected


def monitoring_port_note(port: int | None) -> str:
    """What to say of a port that is nats-server's monitoring port; nothing for any other."""
    if port != MONITORING_PORT:
        return ""
    return (f" ({MONITORING_PORT} is nats-server's HTTP monitoring port, for browsers; NATS clients connect "
            f"to its client port, {CLIENT_PORT} unless configured otherwise)")


def check_server_url(url: str) -> str:
    """``url`` when nats-py can use it (a NATS scheme, or none: ``host:port``); BadServerUrl otherwise."""
    scheme, separator, _ = url.partition("://")
    if not separator or scheme in NATS_SCHEMES:
        return url
    parts = urlsplit(url)
    try:
        given_port = parts.port
    except ValueError:
        given_port = None  # not a number: left out of the corrected URL
    port = CLIENT_PORT if given_port == MONITORING_PORT else given_port
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"  # IPv6
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (f"{userinfo}@" if userinfo else "") + host + (f":{port}" if port else "")
    corrected_scheme = "tls" if scheme.lower() in ("https", "tls") else "nats"
    raise BadServerUrl(url, f"{corrected_scheme}://{netloc}", given_port)


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
        for url in self.servers:
            check_server_url(url)

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


@dataclass(frozen=True)
class ServerCheck:
    """What one server URL answered to a bare TCP connection. ``problem`` is None when a NATS server
    greeted (or when it cannot be told: a websocket URL); else what happened, in a few words.
    ``not_nats``: something listens there, but not a NATS server: trying again will not help."""

    url: str
    problem: str | None = None
    not_nats: bool = False


class NoNatsServer(ConnectionError):
    """:func:`connect` stopped early: no server of the list answers as NATS (``checks``, one a server)."""

    def __init__(self, checks: list[ServerCheck]) -> None:
        if len(checks) == 1:
            problem = checks[0].problem or "no answer"
        else:
            problem = "; ".join(f"{c.url}: {c.problem}" for c in checks)
        super().__init__(problem)
        self.checks, self.problem = checks, problem


def _host_port(url: str) -> tuple[str, int] | None:
    """Where a nats:// or tls:// URL (or host:port) points, with nats-py's defaults; None for a websocket."""
    if url.startswith(("ws://", "wss://")):
        return None
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    return parts.hostname or "127.0.0.1", parts.port or CLIENT_PORT


async def check_server(url: str, timeout: float, greeting_wait: float = GREETING_WAIT_S) -> ServerCheck:
    """Connect to ``url`` and wait for the INFO a NATS server sends as soon as it accepts a connection,
    sending nothing: an HTTP server, or any other service, waits for its client to speak first and
    never greets. The connect may take up to ``timeout``; the greeting ``greeting_wait``, or four
    times what the connect took when that is longer (a slow link)."""
    where = _host_port(url)
    if where is None:
        return ServerCheck(url)  # a websocket server speaks only after an HTTP upgrade: left to nats-py
    host, port = where
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except asyncio.TimeoutError:
        return ServerCheck(url, f"{host}:{port} did not answer within {timeout:g}s")
    except socket.gaierror:
        return ServerCheck(url, f"unknown host {host!r}")
    except ConnectionRefusedError:
        return ServerCheck(url, f"connection refused: nothing listens on port {port} of {host}")
    except OSError as exc:
        return ServerCheck(url, exc.strerror or str(exc) or type(exc).__name__)
    wait = max(greeting_wait, 4 * (loop.time() - started))
    try:
        greeting = await asyncio.wait_for(reader.readexactly(5), wait)
    except asyncio.TimeoutError:
        said = f"it accepts connections but sent nothing within {wait:.1f}s, where a NATS server greets with INFO"
    except asyncio.IncompleteReadError as exc:
        said = f"it closed the connection after {exc.partial!r}" if exc.partial else "it closed the connection unasked"
    except OSError as exc:
        said = f"the connection failed: {exc.strerror or exc}"
    else:
        if greeting == b"INFO ":
            return ServerCheck(url)
        said = f"it greeted with {greeting!r}, where a NATS server greets with INFO"
    finally:
        writer.close()
    return ServerCheck(url, f"nothing there answers as NATS: {said}{monitoring_port_note(port)}", not_nats=True)


async def connect(options: ConnectOptions, connect_attempts: int = 3, fail_fast: bool = False,
                  **extra: Any) -> Client:
    """A connected client: a few tries to connect at first, then reconnects for ever.

    nats-py applies ``max_reconnect_attempts`` to the first connect too, so -1 would
    retry an unreachable server for ever; the limit is lifted once connected.

    Servers are tried in the order given, not shuffled: a node lists the server
    nearest to it first and the rest of the cluster as fallbacks. A server that
    stops answering (frozen, or cut off without a reset) is left once two PINGs go
    unanswered, within about 6 s; nats-py's default (a PING every 120 s) takes 6 minutes.

    A connect not done within :data:`CHECK_AFTER_S` is checked alongside (:func:`check_server`,
    each server): when every server is a port where something else than NATS listens, it
    stops with :class:`NoNatsServer`, as no try can succeed; with ``fail_fast`` (a command a
    user waits for) also when none answers at all (refused, unknown host), rather than trying
    again (as a node does, whose server may be starting with it).
    """
    nc = Client()

    async def on_error(exc: Exception) -> None:
        # nats-py's default prints a traceback for every failed connect attempt.
        log.warning("NATS: %s", str(exc) or type(exc).__name__)

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
    failed = asyncio.Event()  # a try failed: the servers are checked at once
    report = kwargs["error_cb"]

    async def error_cb(exc: Exception) -> None:
        failed.set()
        await report(exc)

    kwargs["error_cb"] = error_cb
    connecting = asyncio.ensure_future(nc.connect(**kwargs))
    try:
        await _connected_or_hopeless(connecting, failed, options.servers, fail_fast, kwargs["connect_timeout"])
    except BaseException:
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        await nc.close()
        raise
    if "max_reconnect_attempts" not in extra:
        nc.options["max_reconnect_attempts"] = -1
    return nc


async def _connected_or_hopeless(connecting: asyncio.Future[None], failed: asyncio.Event, servers: list[str],
                                 fail_fast: bool, patience: float) -> None:
    """Wait for ``connecting``; raise NoNatsServer first when the servers' checks say it cannot succeed.
    The checks start after CHECK_AFTER_S, or at the first failed try."""
    failing = asyncio.ensure_future(failed.wait())
    try:
        await asyncio.wait({connecting, failing}, timeout=CHECK_AFTER_S, return_when=asyncio.FIRST_COMPLETED)
    finally:
        failing.cancel()
    if not connecting.done():
        # A node is not in a hurry: its server is given the whole connect time-out to greet, so that a
        # server slow under load is not taken for something else.
        greeting_wait = GREETING_WAIT_S if fail_fast else patience
        checking = asyncio.ensure_future(asyncio.gather(*(check_server(url, patience, greeting_wait)
                                                          for url in servers)))
        try:
            done, _ = await asyncio.wait({connecting, checking}, return_when=asyncio.FIRST_COMPLETED)
            if connecting not in done:
                checks = checking.result()
                if all(c.problem is not None and (c.not_nats or fail_fast) for c in checks):
                    raise NoNatsServer(checks)
        finally:
            checking.cancel()
    await connecting


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
