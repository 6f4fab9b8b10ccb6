"""The host services in WebAssembly: imports of the module ``nex`` (C header: include/nex.h).

Every import takes and returns ``i32``: pointers and lengths into the guest's
linear memory, and a status. A result of zero or more is success (for calls that
produce bytes, their full length: when it is more than the buffer holds, only
the first ``cap`` bytes are written and the guest may call again with a larger
buffer). A negative result is one of the ``NEX_ERR_*`` codes below, and
``last_error(out, cap)`` gives the message of the last failed call. A host
import never traps for a bad argument: a pointer outside the guest's memory is
``NEX_ERR_MEMORY``.

Why plain imports and not Extism host functions: Extism would make every function
link the Extism PDK and run in the Extism runtime, whose host functions exchange
data through its own memory allocator; Nex runs any WASI command module with
wasmtime directly, and a dozen imports with pointer/length arguments need no SDK
in C, Rust (``#[link(wasm_import_module = "nex")]``), Zig or TinyGo.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import wasmtime

from nex.agent.hostservices import (DENIED, FAILED, INVALID, NOT_FOUND, TIMEOUT, TOO_LARGE, UNAVAILABLE,
                                    FunctionHost, HostError)

log = logging.getLogger(__name__)

MODULE = "nex"

# The NEX_ERR_* codes of nex.h
STATUS = {INVALID: -1, DENIED: -2, NOT_FOUND: -3, TIMEOUT: -4, TOO_LARGE: -5, UNAVAILABLE: -6, FAILED: -7}
ERR_MEMORY = -8


class _OutOfBounds(Exception):
    pass


class _Memory:
    """The guest's exported ``memory``, seen through the caller of one import."""

    def __init__(self, caller: wasmtime.Caller) -> None:
        memory = caller.get("memory")
        if not isinstance(memory, wasmtime.Memory):
            raise _OutOfBounds("the module exports no memory")
        self._caller = caller
        self._memory = memory

    def read(self, pointer: int, length: int) -> bytes:
        start, length = pointer & 0xFFFFFFFF, length & 0xFFFFFFFF
        if start + length > self._memory.data_len(self._caller):
            raise _OutOfBounds(f"{length} bytes at {start} are outside the module's memory")
        return bytes(self._memory.read(self._caller, start, start + length))

    def text(self, pointer: int, length: int) -> str:
        try:
            return self.read(pointer, length).decode()
        except UnicodeDecodeError:
            raise HostError(INVALID, "a name or subject that is not valid UTF-8") from None

    def write(self, data: bytes, pointer: int, cap: int) -> int:
        """Write what fits in ``cap`` bytes at ``pointer``; return the full length."""
        start, cap = pointer & 0xFFFFFFFF, cap & 0xFFFFFFFF
        part = data[:cap]
        if start + len(part) > self._memory.data_len(self._caller):
            raise _OutOfBounds(f"a buffer of {cap} bytes at {start} is outside the module's memory")
        if part:
            self._memory.write(self._caller, part, start)
        return len(data)


class WasmHost:
    """The ``nex`` imports of one function. The last error is per thread: calls of a function
    with max_concurrency run on several threads at once."""

    def __init__(self, host: FunctionHost) -> None:
        self.host = host
        self._call = threading.local()

    def define(self, linker: wasmtime.Linker) -> None:
        for name, arity, call in self._imports():
            linker.define_func(MODULE, name, wasmtime.FuncType([wasmtime.ValType.i32()] * arity,
                                                               [wasmtime.ValType.i32()]),
                               self._guarded(name, call), access_caller=True)

    def _imports(self) -> list[tuple[str, int, Callable[..., int]]]:
        host = self.host
        return [
            ("kv_get", 6, lambda m, b, bl, k, kl, out, cap: self._bytes(
                m, host.kv_get(m.text(b, bl), m.text(k, kl)), out, cap, "no such key")),
            ("kv_put", 6, lambda m, b, bl, k, kl, v, vl: _zero(host.kv_put(m.text(b, bl), m.text(k, kl), m.read(v, vl)))),
            ("kv_delete", 4, lambda m, b, bl, k, kl: _zero(host.kv_delete(m.text(b, bl), m.text(k, kl)))),
            ("kv_keys", 4, lambda m, b, bl, out, cap: m.write(_lines(host.kv_keys(m.text(b, bl))), out, cap)),
            ("object_get", 6, lambda m, b, bl, n, nl, out, cap: self._bytes(
                m, host.object_get(m.text(b, bl), m.text(n, nl)), out, cap, "no such object")),
            ("object_put", 6, lambda m, b, bl, n, nl, d, dl: _zero(
                host.object_put(m.text(b, bl), m.text(n, nl), m.read(d, dl)))),
            ("object_delete", 4, lambda m, b, bl, n, nl: _zero(host.object_delete(m.text(b, bl), m.text(n, nl)))),
            ("object_list", 4, lambda m, b, bl, out, cap: m.write(
                _lines([name for name, _ in host.object_list(m.text(b, bl))]), out, cap)),
            ("publish", 4, lambda m, s, sl, d, dl: _zero(host.publish(m.text(s, sl), m.read(d, dl)))),
            ("request", 7, lambda m, s, sl, d, dl, timeout_ms, out, cap: m.write(
                host.request(m.text(s, sl), m.read(d, dl), None, _seconds(timeout_ms)).data, out, cap)),
            ("http", 12, self._http),
            ("last_error", 2, lambda m, out, cap: m.write(getattr(self._call, "last_error", b""), out, cap)),
        ]

    def _guarded(self, name: str, call: Callable[..., int]) -> Callable[..., int]:
        def guarded(caller: wasmtime.Caller, *args: int) -> int:
            try:
                return call(_Memory(caller), *args)
            except HostError as exc:
                return self._failed(STATUS[exc.kind], exc.message)
            except _OutOfBounds as exc:
                return self._failed(ERR_MEMORY, f"{name}: {exc}")
            except Exception as exc:  # an exception out of a host function would trap the guest
                log.exception("host import %s failed", name)
                return self._failed(STATUS[FAILED], f"{name}: internal error of the agent: {exc}")
        return guarded

    def _failed(self, status: int, message: str) -> int:
        self._call.last_error = message.encode()
        return status

    def _bytes(self, memory: _Memory, data: bytes | None, out: int, cap: int, missing: str) -> int:
        if data is None:
            raise HostError(NOT_FOUND, missing)
        return memory.write(data, out, cap)

    def _http(self, memory: _Memory, method: int, method_len: int, url: int, url_len: int, headers: int,
              headers_len: int, body: int, body_len: int, timeout_ms: int, status_out: int, out: int,
              cap: int) -> int:
        reply = self.host.http(memory.text(method, method_len), memory.text(url, url_len),
                               memory.read(body, body_len), _headers(memory.text(headers, headers_len)),
                               _seconds(timeout_ms))
        if status_out:
            memory.write(reply.status.to_bytes(4, "little", signed=True), status_out, 4)
        return memory.write(reply.data, out, cap)


def _zero(_: Any) -> int:
    return 0


def _lines(names: list[str]) -> bytes:
    return "".join(f"{name}\n" for name in names).encode()


def _seconds(timeout_ms: int) -> float | None:
    if timeout_ms < 0:
        raise HostError(INVALID, f"a negative timeout ({timeout_ms} ms)")
    return timeout_ms / 1000 if timeout_ms else None


def _headers(text: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in filter(None, text.split("\n")):
        name, colon, value = line.partition(":")
        if not colon:
            raise HostError(INVALID, f"http: a header line without ':': {line!r}")
        headers[name.strip()] = value.strip()
    return headers

