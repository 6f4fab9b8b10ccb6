"""Host services of functions: key-value, object store, messaging and HTTP, scoped to a namespace.

One :class:`HostServices` per agent performs the operations on the agent's event
loop, over the agent's NATS connection. Each function gets a
:class:`FunctionHost`, called from the function's own thread (JavaScript through
:mod:`nex.agent.js.host`, Wasm through :mod:`nex.agent.wasm.host`): a call hands
the operation to the loop and blocks that thread, never the loop, until it is
done or its time is up.

Scope: the agent's connection may do anything, so the scope is enforced here.

- ``kv("cart")`` in namespace ``shop`` is the JetStream KV bucket ``NEXKV_shop_cart``;
  ``objects("cart")`` the object store ``NEXOBJ_shop_cart``. A function's bucket
  name holds no ``_`` so that no two (namespace, bucket) pairs share a stream.
  Reads of a bucket that does not exist find nothing; the first write creates it
  with the node's replicas.
- Messaging: the namespace's subjects ``nex.<ns>.>`` and the function's own
  trigger subjects, never a reserved one: :class:`nex.api.subjects.WorkloadScope`,
  the rule of workload credentials too.
- Every message sent carries the invocation's hop plus one (:mod:`nex.api.hops`).
- HTTP: the methods and hosts the node's config allows; no host by default.
  Redirects are not followed (a redirect could leave the allowed hosts).

Every call has a time limit: its own (default ``DEFAULT_TIMEOUT_S``), cut to what
is left of the invocation's. Sizes are bounded. A call that fails raises
:class:`HostError` with a ``kind`` the function sees (JavaScript ``error.code``,
Wasm a negative status).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar
from urllib.parse import urlsplit

from nats.aio.client import Client
from nats.errors import Error as NatsError, NoRespondersError, TimeoutError as NatsTimeoutError
from nats.js import api
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError, NotFoundError

from nex.agent import hops, protocol
from nex.agent.tracing import Propagation, Tracing
from nex.agent.worker import release_loop
from nex.api.errors import NexError
from nex.api import subjects
from nex.api.subjects import WorkloadScope

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 2.0
MAX_TIMEOUT_S = 60.0
_GRACE_S = 0.25
MAX_VALUE_BYTES = 1024 * 1024  # a KV value, a message
MAX_OBJECT_BYTES = 8 * 1024 * 1024
MAX_HTTP_BODY_BYTES = 4 * 1024 * 1024  # sent or received
MAX_KEYS = 10_000  # listed by keys() and list()
MAX_NAME_CHARS = 1024

_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")

# HostError kinds, in JavaScript error.code; the Wasm status of each is in nex.agent.wasm.host.
INVALID = "invalid"  # a bad argument
DENIED = "denied"  # outside the function's scope, or not allowed by the node
NOT_FOUND = "not_found"
TIMEOUT = "timeout"
TOO_LARGE = "too_large"
UNAVAILABLE = "unavailable"  # nobody answers, NATS or JetStream is not there
FAILED = "failed"  # anything else: the HTTP server refused the connection, ...
_CODES = {INVALID: 400, DENIED: 403, NOT_FOUND: 404, TIMEOUT: 504, TOO_LARGE: 413, UNAVAILABLE: 503, FAILED: 502}


class HostError(NexError):
    """A host call that failed: ``kind`` says why, the message says what, for the function's author."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = _CODES[kind]


@dataclass(frozen=True, slots=True)
class Reply:
    """What a request or an HTTP call got back."""

    data: bytes
    headers: dict[str, str]
    status: int = 0  # HTTP only


def kv_bucket(namespace: str, bucket: str) -> str:
    """The JetStream KV bucket behind ``nex.kv(bucket)`` in ``namespace``."""
    return subjects.host_kv_bucket(namespace, _check_bucket(bucket))


def object_bucket(namespace: str, bucket: str) -> str:
    """The JetStream object store behind ``nex.objects(bucket)`` in ``namespace``."""
    return subjects.host_object_bucket(namespace, _check_bucket(bucket))


def host_allowed(host: str, allowed: list[str]) -> bool:
    """``host`` is one of ``allowed``: an exact name, or under a ``*.domain`` entry (not the domain itself)."""
    host = host.lower().rstrip(".")
    return any(host == entry or (entry.startswith("*.") and host.endswith(entry[1:])) for entry in allowed)


class HostServices:
    """The host services of one agent: one event loop, one NATS connection, the node's settings."""

    def __init__(self, nc: Client, settings: protocol.HostSettings, loop: asyncio.AbstractEventLoop,
                 tracing: Tracing | None = None) -> None:
        self.settings = settings
        self.tracing = tracing or Propagation()  # puts the invocation's trace on messages and HTTP requests
        self.loop = loop
        self.loop_thread = threading.get_ident()  # made on the loop's thread
        self._nc = nc
        self._js = nc.jetstream()
        self._kv: dict[str, Any] = {}
        self._objects: dict[str, Any] = {}
        self._creating = asyncio.Lock()

    def scope(self, load: protocol.Load) -> FunctionHost:
        return FunctionHost(self, load.namespace, [trigger.subject for trigger in load.triggers], load.timeout_ms)

    # -- on the loop --

    async def kv_get(self, bucket: str, key: str) -> bytes | None:
        kv = await self._kv_bucket(bucket, create=False)
        if kv is None:
            return None
        try:
            return (await kv.get(key)).value or b""
        except KeyNotFoundError:  # KeyDeletedError too
            return None

    async def kv_put(self, bucket: str, key: str, value: bytes) -> None:
        kv = await self._kv_bucket(bucket, create=True)
        await kv.put(key, value)

    async def kv_delete(self, bucket: str, key: str) -> None:
        kv = await self._kv_bucket(bucket, create=False)
        if kv is not None:
            await kv.delete(key)

    async def kv_keys(self, bucket: str) -> list[str]:
        kv = await self._kv_bucket(bucket, create=False)
        if kv is None:
            return []
        try:
            keys = await kv.keys()
        except NoKeysError:
            return []
        return keys[:MAX_KEYS]

    async def object_get(self, bucket: str, name: str) -> bytes | None:
        store = await self._object_store(bucket, create=False)
        if store is None:
            return None
        try:
            info = await store.get_info(name)
        except NotFoundError:  # ObjectNotFoundError, ObjectDeletedError
            return None
        if info.size and info.size > MAX_OBJECT_BYTES:
            raise HostError(TOO_LARGE, f"object {name!r} holds {info.size} bytes: the limit is {MAX_OBJECT_BYTES}")
        try:
            return bytes((await store.get(name)).data or b"")
        except NotFoundError:
            return None

    async def object_put(self, bucket: str, name: str, data: bytes) -> None:
        store = await self._object_store(bucket, create=True)
        await store.put(name, data)

    async def object_delete(self, bucket: str, name: str) -> None:
        store = await self._object_store(bucket, create=False)
        if store is None:
            return
        try:
            await store.delete(name)
        except NotFoundError:
            pass

    async def object_list(self, bucket: str) -> list[tuple[str, int]]:
        store = await self._object_store(bucket, create=False)
        if store is None:
            return []
        try:
            infos = await store.list(ignore_deletes=True)
        except NotFoundError:
            return []
        return [(info.name, info.size or 0) for info in infos if not info.deleted][:MAX_KEYS]

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None) -> None:
        await self._nc.publish(subject, data, headers=headers or None)

    async def request(self, subject: str, data: bytes, headers: dict[str, str] | None, timeout: float) -> Reply:
        try:
            msg = await self._nc.request(subject, data, timeout=timeout, headers=headers or None)
        except NoRespondersError:
            raise HostError(UNAVAILABLE, f"no responders on {subject}") from None
        except NatsTimeoutError:
            raise HostError(TIMEOUT, f"no reply on {subject} within {_ms(timeout)} ms") from None
        return Reply(bytes(msg.data), dict(msg.headers or {}))

    async def http(self, method: str, url: str, body: bytes, headers: dict[str, str], timeout: float) -> Reply:
        # http.client blocks: it runs on the loop's executor, and its socket times out with the call.
        return await self.loop.run_in_executor(None, _http_exchange, method, url, body, headers, timeout)

    async def _kv_bucket(self, name: str, create: bool) -> Any:
        kv = self._kv.get(name)
        if kv is not None:
            return kv
        try:
            kv = await self._js.key_value(name)
        except BucketNotFoundError:
            if not create:
                return None
            async with self._creating:
                kv = await self._js.create_key_value(bucket=name, history=1, replicas=self.settings.replicas)
        self._kv[name] = kv
        return kv

    async def _object_store(self, name: str, create: bool) -> Any:
        store = self._objects.get(name)
        if store is not None:
            return store
        try:
            store = await self._js.object_store(name)
        except BucketNotFoundError:
            if not create:
                return None
            async with self._creating:
                store = await self._js.create_object_store(
                    name, config=api.ObjectStoreConfig(bucket=name, replicas=self.settings.replicas))
        self._objects[name] = store
        return store


class FunctionHost:
    """The host services as one function sees them; every method runs on the function's thread.

    Calls block the thread until the loop has done the operation. ``begin()`` marks
    the start of an invocation: no call outlives the invocation's time limit.
    """

    def __init__(self, services: HostServices, namespace: str, triggers: list[str], timeout_ms: int) -> None:
        self.namespace = namespace
        self._services = services
        self.scope = WorkloadScope.of(namespace, triggers)
        self._invocation_s = timeout_ms / 1000
        # The deadline of the invocation on each thread: a wasm function with max_concurrency
        # runs several invocations at once, each on a thread of its own.
        self._call = threading.local()

    def begin(self) -> None:
        """An invocation starts now, on this thread."""
        self._call.deadline = time.monotonic() + self._invocation_s

    # -- key-value --

    def kv_get(self, bucket: str, key: str, timeout: float | None = None) -> bytes | None:
        name, key = kv_bucket(self.namespace, bucket), _check_key(key)
        return self._run("kv get", lambda _: self._services.kv_get(name, key), timeout)

    def kv_put(self, bucket: str, key: str, value: bytes, timeout: float | None = None) -> None:
        name, key = kv_bucket(self.namespace, bucket), _check_key(key)
        _check_size("the value", value, MAX_VALUE_BYTES)
        self._run("kv put", lambda _: self._services.kv_put(name, key, value), timeout)

    def kv_delete(self, bucket: str, key: str, timeout: float | None = None) -> None:
        name, key = kv_bucket(self.namespace, bucket), _check_key(key)
        self._run("kv delete", lambda _: self._services.kv_delete(name, key), timeout)

    def kv_keys(self, bucket: str, timeout: float | None = None) -> list[str]:
        name = kv_bucket(self.namespace, bucket)
        return self._run("kv keys", lambda _: self._services.kv_keys(name), timeout)

    # -- object store --

    def object_get(self, bucket: str, name: str, timeout: float | None = None) -> bytes | None:
        store, name = object_bucket(self.namespace, bucket), _check_name(name)
        return self._run("object get", lambda _: self._services.object_get(store, name), timeout)

    def object_put(self, bucket: str, name: str, data: bytes, timeout: float | None = None) -> None:
        store, name = object_bucket(self.namespace, bucket), _check_name(name)
        _check_size("the object", data, MAX_OBJECT_BYTES)
        self._run("object put", lambda _: self._services.object_put(store, name, data), timeout)

    def object_delete(self, bucket: str, name: str, timeout: float | None = None) -> None:
        store, name = object_bucket(self.namespace, bucket), _check_name(name)
        self._run("object delete", lambda _: self._services.object_delete(store, name), timeout)

    def object_list(self, bucket: str, timeout: float | None = None) -> list[tuple[str, int]]:
        store = object_bucket(self.namespace, bucket)
        return self._run("object list", lambda _: self._services.object_list(store), timeout)

    # -- messaging --

    def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        self._check_subject(subject)
        _check_size("the message", data, MAX_VALUE_BYTES)
        checked = _check_headers(headers)
        with self._services.tracing.host_call(f"publish {subject}", {"messaging.destination.name": subject}) as trace:
            checked = hops.outgoing(_traced(checked, trace))
            self._run("publish", lambda _: self._services.publish(subject, data, checked), None)

    def request(self, subject: str, data: bytes, headers: dict[str, str] | None = None,
                timeout: float | None = None) -> Reply:
        self._check_subject(subject)
        _check_size("the message", data, MAX_VALUE_BYTES)
        checked = _check_headers(headers)
        with self._services.tracing.host_call(f"request {subject}", {"messaging.destination.name": subject}) as trace:
            checked = hops.outgoing(_traced(checked, trace))
            return self._run("request", lambda budget: self._services.request(subject, data, checked, budget),
                             timeout)

    # -- HTTP --

    def http(self, method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None,
             timeout: float | None = None) -> Reply:
        settings = self._services.settings
        method = str(method).upper()
        if method not in protocol.HTTP_METHODS:
            raise HostError(INVALID, f"http: unknown method {method}: use GET, POST, PUT or DELETE")
        if method not in settings.http_allow_methods:
            raise HostError(DENIED, f"http: the node does not allow {method} requests"
                                    f" (allowed: {', '.join(settings.http_allow_methods) or 'none'})")
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
            parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
        except ValueError as exc:
            raise HostError(INVALID, f"http: invalid URL {url!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not host:
            raise HostError(INVALID, f"http: {url!r} is not an http:// or https:// URL with a host")
        if not host_allowed(host, settings.http_allow_hosts):
            raise HostError(DENIED, f"http: the node does not allow requests to {host}"
                                    " (add it to http_allow_hosts in the node's config)")
        _check_size("the request body", body, MAX_HTTP_BODY_BYTES)
        checked = _check_headers(headers) or {}
        with self._services.tracing.host_call(f"http {method}", {"http.request.method": method,
                                                                  "server.address": host}) as trace:
            checked = _traced(checked, trace) or {}
            return self._run("http", lambda budget: self._services.http(method, url, body, checked, budget), timeout)

    # -- the bridge to the loop --

    def _run(self, what: str, operation: Callable[[float], Awaitable[T]], timeout: float | None) -> T:
        """Run ``operation(budget)`` on the loop within the call's time; block this thread until it is done."""
        loop = self._services.loop
        budget = self._budget(what, timeout)

        async def bounded() -> T:
            # A little past the budget: an operation that bounds itself (request, HTTP) says why it ended.
            return await asyncio.wait_for(operation(budget), budget + _GRACE_S)

        release_loop()  # the loop may be blocked waiting for this very call (nex.agent.worker)
        future = asyncio.run_coroutine_threadsafe(bounded(), loop)
        try:
            return future.result(budget + 2 * _GRACE_S)  # the loop's own wait_for ends it first
        except (asyncio.TimeoutError, concurrent.futures.TimeoutError):
            future.cancel()
            raise HostError(TIMEOUT, f"{what}: no answer within {_ms(budget)} ms") from None
        except HostError as exc:
            raise HostError(exc.kind, exc.message if exc.message.startswith(what) else f"{what}: {exc.message}") \
                from None
        except NatsError as exc:
            raise HostError(UNAVAILABLE, f"{what}: {_describe(exc)}") from None
        except OSError as exc:
            raise HostError(FAILED, f"{what}: {exc}") from None

    def _budget(self, what: str, timeout: float | None) -> float:
        if threading.get_ident() == self._services.loop_thread:
            raise RuntimeError("host services are called from a function's thread, never from the event loop")
        if timeout is not None and not (0 < timeout <= MAX_TIMEOUT_S):
            raise HostError(INVALID, f"{what}: the timeout must be more than 0 and at most {MAX_TIMEOUT_S:g} s")
        left = getattr(self._call, "deadline", time.monotonic() + self._invocation_s) - time.monotonic()
        if left <= 0:
            raise HostError(TIMEOUT, f"{what}: the invocation's time is up")
        return min(timeout or DEFAULT_TIMEOUT_S, left)

    def _check_subject(self, subject: str) -> None:
        if (not isinstance(subject, str) or not subject or len(subject) > MAX_NAME_CHARS
                or any(c in subject for c in " \t\r\n\0") or "" in subject.split(".")):
            raise HostError(INVALID, f"invalid subject {subject!r}")
        if "*" in subject.split(".") or ">" in subject.split("."):
            raise HostError(INVALID, f"cannot publish to {subject}: a subject with wildcards")
        problem = self.scope.publish_problem(subject, "function")
        if problem is not None:
            raise HostError(DENIED, problem)


def _http_exchange(method: str, url: str, body: bytes, headers: dict[str, str], timeout: float) -> Reply:
    parts = urlsplit(url)
    connection_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_type(parts.hostname or "", parts.port, timeout=timeout)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        connection.request(method, path, body=body if body or method in ("POST", "PUT") else None, headers=headers)
        response = connection.getresponse()
        data = response.read(MAX_HTTP_BODY_BYTES + 1)
        if len(data) > MAX_HTTP_BODY_BYTES:
            raise HostError(TOO_LARGE, f"the response from {parts.hostname} is over {MAX_HTTP_BODY_BYTES} bytes")
        return Reply(data, {name.lower(): value for name, value in response.getheaders()}, response.status)
    except TimeoutError:
        raise HostError(TIMEOUT, f"{method} {url}: no answer within {_ms(timeout)} ms") from None
    except (OSError, http.client.HTTPException) as exc:
        raise HostError(FAILED, f"{method} {url}: {exc or type(exc).__name__}") from None
    finally:
        connection.close()


def _check_bucket(bucket: str) -> str:
    if not subjects.is_host_bucket(bucket):
        raise HostError(INVALID, f"invalid bucket name {bucket!r}: use 1 to 64 letters, digits and '-'")
    return bucket


def _check_key(key: str) -> str:
    if (not isinstance(key, str) or not _KEY.fullmatch(key) or len(key) > MAX_NAME_CHARS
            or key.startswith(".") or key.endswith(".")):
        raise HostError(INVALID, f"invalid key {key!r}: use letters, digits and -/_=. (not first or last)")
    return key


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS or "\0" in name:
        raise HostError(INVALID, f"invalid object name {name!r}")
    return name


def _check_size(what: str, data: bytes, limit: int) -> None:
    if len(data) > limit:
        raise HostError(TOO_LARGE, f"{what} holds {len(data)} bytes: the limit is {limit}")


def _check_headers(headers: dict[str, str] | None) -> dict[str, str] | None:
    if not headers:
        return None
    if not isinstance(headers, dict) or len(headers) > 64:
        raise HostError(INVALID, "headers must be an object of at most 64 names and text values")
    for name, value in headers.items():
        if (not isinstance(name, str) or not isinstance(value, str) or not name
                or any(c in name for c in ": \r\n\0") or any(c in value for c in "\r\n\0")):
            raise HostError(INVALID, f"invalid header {name!r}")
    return headers


def _traced(headers: dict[str, str] | None, trace: dict[str, str]) -> dict[str, str] | None:
    """The call's headers with the trace's; a traceparent the function set itself wins."""
    if not trace:
        return headers
    if headers and any(name.lower() in trace for name in headers):
        return headers
    return {**(headers or {}), **trace}


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
