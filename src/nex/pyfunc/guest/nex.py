"""``import nex``: the host services of a Nex function written in Python.

The same calls as JavaScript's ``nex`` global (docs/functions.md, "Host services"), made
through the component's ``nex:host`` imports: they run in the node's agent, under the
same rules, limits and errors. In Python they simply return (no promises): a call blocks
the function until the host answers, within what is left of the call's time.

    import nex

    def handle(subject, payload):
        carts = nex.kv("carts")
        cart = carts.get("alice", type="json") or []
        cart.append(payload.decode())
        carts.put("alice", cart)
        nex.publish("nex.shop.cart.changed", {"items": len(cart)})
        return cart

A failed call raises :class:`NexError`, whose ``code`` says why (``invalid``, ``denied``,
``not_found``, ``timeout``, ``too_large``, ``unavailable``, ``failed``).
"""

import json as _json

from componentize_py_types import Err as _Err
from wit_world.imports import http as _http
from wit_world.imports import kv as _kv
from wit_world.imports import messaging as _messaging
from wit_world.imports import objects as _objects

__all__ = ["NexError", "KeyValue", "ObjectStore", "Reply", "Response", "kv", "objects", "publish", "request", "http"]


class NexError(Exception):
    """A host call that failed; ``code`` is JavaScript's ``error.code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _call(operation, *args):
    try:
        return operation(*args)
    except _Err as err:
        failure = err.value
        raise NexError(failure.kind.name.lower(), failure.message) from None


def _bytes(value) -> bytes:
    """What a call sends: bytes as they are, text as UTF-8, anything else as JSON (as JavaScript's ``put``)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    try:
        return _json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise NexError("invalid", f"a value of type {type(value).__name__} is not bytes, str or JSON: {exc}") from None


def _decoded(data, type: str):
    if data is None:
        return None
    if type == "text":
        return data.decode()
    if type == "json":
        return _json.loads(data)
    if type == "bytes":
        return data
    raise NexError("invalid", f"type must be 'text', 'json' or 'bytes', not {type!r}")


def _headers(headers) -> list:
    if headers is None:
        return []
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise NexError("invalid", "headers must be a dict of text names and values")
    return list(headers.items())


def _timeout(timeout):
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < 2**32:
        raise NexError("invalid", f"timeout is in milliseconds, a positive number, not {timeout!r}")
    return int(timeout)


class KeyValue:
    """``nex.kv(bucket)``: the namespace's KV bucket ``bucket``."""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket

    def get(self, key: str, type: str = "text"):
        """The value of ``key``, or None: ``type`` ``"text"`` (UTF-8, the default), ``"json"`` or ``"bytes"``."""
        return _decoded(_call(_kv.get, self.bucket, key), type)

    def put(self, key: str, value) -> None:
        """Stores text as UTF-8, bytes as they are, anything else as JSON."""
        _call(_kv.put, self.bucket, key, _bytes(value))

    def delete(self, key: str) -> None:
        _call(_kv.delete, self.bucket, key)

    def keys(self) -> list:
        return _call(_kv.keys, self.bucket)


class ObjectStore:
    """``nex.objects(bucket)``: the namespace's object store ``bucket``."""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket

    def get(self, name: str, type: str = "text"):
        return _decoded(_call(_objects.get, self.bucket, name), type)

    def put(self, name: str, value) -> None:
        _call(_objects.put, self.bucket, name, _bytes(value))

    def delete(self, name: str) -> None:
        _call(_objects.delete, self.bucket, name)

    def list(self) -> list:
        """The objects, as ``{"name": ..., "size": ...}``."""
        return [{"name": info.name, "size": info.size} for info in _call(_objects.list_objects, self.bucket)]


class Reply:
    """A reply to :func:`request`: ``data`` (bytes), ``headers`` (a dict), ``text()``, ``json()``."""

    def __init__(self, data: bytes, headers: dict) -> None:
        self.data, self.headers = data, headers

    def text(self) -> str:
        return self.data.decode()

    def json(self):
        return _json.loads(self.data)


class Response:
    """An HTTP response: ``status``, ``ok``, ``headers`` (lower-case names), ``body`` (bytes), ``text()``, ``json()``."""

    def __init__(self, status: int, headers: dict, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body
        self.ok = 200 <= status < 300

    def text(self) -> str:
        return self.body.decode()

    def json(self):
        return _json.loads(self.body)


def kv(bucket: str) -> KeyValue:
    """The namespace's KV bucket ``bucket`` (created by its first write)."""
    return KeyValue(bucket)


def objects(bucket: str) -> ObjectStore:
    """The namespace's object store ``bucket`` (created by its first write)."""
    return ObjectStore(bucket)


def publish(subject: str, data=b"", headers: dict | None = None) -> None:
    """Publishes on a subject of the namespace; ``data`` as for ``put``."""
    _call(_messaging.publish, subject, _bytes(data), _headers(headers))


def request(subject: str, data=b"", timeout: float | None = None, headers: dict | None = None) -> Reply:
    """Sends a request and returns its reply, waiting at most ``timeout`` milliseconds."""
    message = _call(_messaging.request, subject, _bytes(data), _headers(headers), _timeout(timeout))
    return Reply(message.data, dict(message.headers))


class _Http:
    """``nex.http``: requests to the hosts the node allows."""

    def _send(self, method: str, url: str, body, headers, timeout) -> Response:
        sent = b"" if body is None else _bytes(body)
        response = _call(_http.send, method, url, _headers(headers), sent, _timeout(timeout))
        return Response(response.status, dict(response.headers), response.body)

    def get(self, url: str, headers: dict | None = None, timeout: float | None = None) -> Response:
        return self._send("GET", url, None, headers, timeout)

    def delete(self, url: str, headers: dict | None = None, timeout: float | None = None) -> Response:
        return self._send("DELETE", url, None, headers, timeout)

    def post(self, url: str, body=None, headers: dict | None = None, timeout: float | None = None) -> Response:
        return self._send("POST", url, body, headers, timeout)

    def put(self, url: str, body=None, headers: dict | None = None, timeout: float | None = None) -> Response:
        return self._send("PUT", url, body, headers, timeout)


http = _Http()
