"""The client's transport: one connection, the control subjects of one namespace, requests and
scatter-gather, the claims that sign them, and every failure as a :class:`NexError`.

Every failure surfaces as a :class:`nex.api.errors.NexError`: an error reply from a
node, a subject nobody answers (``NodeNotFound``, ``WorkloadNotFound``), a request
that times out or a NATS server that cannot be reached (``Unavailable``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Callable, Sequence, TypeVar

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel, ValidationError

from nex.api import claims, subjects
from nex.api.errors import BadRequest, InternalError, NatsRefused, NatsUnavailable, NexError, Unavailable, from_reply
from nex.api.models import describe_validation_error
from nex.connection import ConnectOptions, NoNatsServer, confined_inbox_prefix, connect
from nex.security.keystore import UserKeys

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
C = TypeVar("C", bound="Transport")

DEFAULT_GATHER_S = 0.5
# A failed first connect gives up after this many tries per server (nats-py loops
# forever on -1); the same number bounds reconnects of a long `logs -f`.
_CONNECT_ATTEMPTS = 2


def target_token(value: str, what: str) -> str:
    """``value``, when it can be a subject token; BadRequest naming ``what`` otherwise."""
    # The target becomes a subject token; a '*' or '.' would address other nodes.
    if not subjects.is_token(value):
        raise BadRequest(f"invalid {what} {value!r}")
    return value


def _is_no_responders(msg: Msg) -> bool:
    return bool(msg.headers) and msg.headers.get("Status") == "503" and not msg.data


class ReplyInbox:
    """Where the replies of a client's scatter-gather requests (PING, AUCTION...) arrive.

    One wildcard subscription for all of them, made on first use, rather than a
    subscription per request: a subscription is a SUB and an UNSUB that every
    server of a cluster passes along its routes, and an auction a placement was
    the most frequent such request.
    """

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._subscription: Subscription | None = None
        self._subscribing = asyncio.Lock()
        self._waiting: dict[str, asyncio.Queue[Msg]] = {}
        self._tokens = itertools.count()

    async def open(self) -> tuple[str, asyncio.Queue[Msg]]:
        """A new inbox subject, and the queue its messages arrive in until :meth:`close`."""
        async with self._subscribing:
            if self._subscription is None:
                self._subscription = await self._nc.subscribe(f"{self._prefix}.*", cb=self._deliver)
        inbox = f"{self._prefix}.{next(self._tokens)}"
        arriving: asyncio.Queue[Msg] = asyncio.Queue()
        self._waiting[inbox] = arriving
        return inbox, arriving

    def close(self, inbox: str) -> None:
        """Stop delivering to ``inbox``; what still comes for it is dropped."""
        self._waiting.pop(inbox, None)  # what still comes for it is dropped

    async def _deliver(self, msg: Msg) -> None:
        arriving = self._waiting.get(msg.subject)
        if arriving is not None:
            arriving.put_nowait(msg)


class Transport:
    """The connection and the requests every part of :class:`nex.client.NexClient` is built on."""

    def __init__(self, nc: Client, namespace: str, timeout: float, keys: UserKeys | None, confined: bool) -> None:
        self.nc = nc
        self.namespace = target_token(namespace, "namespace")
        self.timeout = timeout
        self.keys = keys
        # Connected with the credentials of one namespace (nex creds): JetStream is read without
        # consumers, which such a user may not create (nex.security.natsauth.client_permissions).
        self.confined = confined
        self._owns_connection = False
        self._replies = ReplyInbox(nc)

    @classmethod
    async def connect(
        cls: type[C], options: ConnectOptions, namespace: str = subjects.DEFAULT_NAMESPACE, timeout: float = 5.0,
        keys: UserKeys | None = None,
    ) -> C:
        """Connect to NATS; the client closes the connection in :meth:`close`."""
        target_token(namespace, "namespace")
        connect_errors: list[BaseException] = []
        connected = False

        async def on_error(exc: BaseException) -> None:
            # Instead of nats-py's default, which logs a traceback: while connecting the
            # last error explains the failure; later ones (permissions...) are warnings.
            if connected:
                log.warning("nats: %s", _describe(exc))
            else:
                connect_errors.append(exc)

        where = ",".join(options.servers)
        try:
            nc = await connect(
                options.with_name(options.name or "nex-client"), error_cb=on_error, fail_fast=True,
                max_reconnect_attempts=_CONNECT_ATTEMPTS, connect_timeout=max(1, round(timeout)),
            )
        except NoNatsServer as exc:
            raise NatsUnavailable(where, exc.problem) from None
        except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
            # The server refuses bad credentials with -ERR and then closes: the refusal,
            # not the reset that follows it, is what the user needs to read.
            refusals = [e for e in connect_errors if isinstance(e, nats.errors.Error) and "authoriz" in str(e).lower()]
            if refusals:
                raise NatsRefused(where, _describe(refusals[-1])) from None
            raise NatsUnavailable(where, _describe(connect_errors[-1] if connect_errors else exc)) from None
        connected = True
        confined = options.creds is not None and confined_inbox_prefix(options.creds) is not None
        client = cls(nc, namespace, timeout, keys, confined)
        client._owns_connection = True
        return client

    async def close(self) -> None:
        """Close the connection, when the client made it (:meth:`connect`); a second close is harmless."""
        if self._owns_connection and not self.nc.is_closed:
            await self.nc.close()

    async def __aenter__(self: C) -> C:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _subject(self, verb: str, target: str | None = None) -> str:
        return subjects.control(self.namespace, verb, target)

    def _claim_header(self, subject: str, body: bytes) -> dict[str, str] | None:
        """The ``Nex-Claim`` header for sending ``body`` to ``subject``; None without keys."""
        if self.keys is None:
            return None
        return {claims.CLAIM_HEADER: claims.sign_request(self.keys.issuer, subject, body, time.time())}

    async def _request(
        self, verb: str, target: str, model: type[M], not_found: Callable[[str], NexError],
        body: bytes = b"", timeout: float | None = None, signed: bool = False,
    ) -> M:
        """One control request; ``signed``: with a claim, when the client has keys."""
        subject = self._subject(verb, target)
        timeout = self.timeout if timeout is None else timeout
        headers = self._claim_header(subject, body) if signed else None
        try:
            msg = await self.nc.request(subject, body, timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise not_found(target) from None
        except nats.errors.TimeoutError:
            raise Unavailable(f"no reply to {verb} {target} within {timeout:g}s") from None
        return _decode(msg, model, subject)

    async def _gather(self, verb: str, model: type[M], wait: float, expected: int | None,
                      body: bytes = b"", headers: dict[str, str] | None = None,
                      to: Sequence[tuple[str, dict[str, str] | None]] | None = None) -> list[M]:
        """Scatter a request to every node (or to the subjects of ``to``, each with its headers)
        and collect the replies that come within ``wait``."""
        subject = self._subject(verb)
        inbox, arriving = await self._replies.open()
        try:
            for each, each_headers in to if to is not None else [(subject, headers)]:
                await self.nc.publish(each, body, reply=inbox, headers=each_headers)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            replies: list[M] = []
            gone = 0  # subjects of ``to`` nothing listens to (a node that left)
            while (remaining := deadline - loop.time()) > 0 and len(replies) + gone != expected:
                try:
                    msg = await asyncio.wait_for(arriving.get(), remaining)
                except asyncio.TimeoutError:
                    break
                if _is_no_responders(msg):
                    if to is None:
                        break  # the server says at once that nothing listens: no node
                    gone += 1
                    continue
                replies.append(_decode(msg, model, subject))
            return replies
        finally:
            self._replies.close(inbox)


def _decode(msg: Msg, model: type[M], subject: str) -> M:
    error = from_reply(msg.data, msg.headers)
    if error is not None:
        raise error
    try:
        return model.model_validate_json(msg.data)
    except ValidationError as exc:
        raise InternalError(f"unexpected reply to {subject}: {describe_validation_error(exc)}") from None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, ConnectionRefusedError) or "Connect call failed" in text:
        return "connection refused"
    return text or type(exc).__name__
