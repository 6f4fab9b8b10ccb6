"""WebAssembly components (WASI 0.2) as functions: the world ``nex:function/function``.

The contract is the WIT of src/nex/wit (docs/wit): the component exports
``handle: func(subject: string, payload: list<u8>) -> result<list<u8>, string>``; ``ok`` is
the reply, ``err`` the error reply with its text as the message (as when a JavaScript
function throws). It may import WASI 0.2 (no files, no network, no environment beyond the
deploy request's; a clock and randomness) and the host services, the package ``nex:host``
(:mod:`nex.agent.wasm.component_host`). What it writes on stdout or stderr is log lines.

Kept instances: unlike a command module, a component is instantiated once and its instance
answers call after call (componentize-py's take about 4 ms to instantiate, and a call
60 µs). It keeps its memory between calls, as a JavaScript function keeps its globals. A
call that traps, runs past its time or out of memory leaves its instance in no state to
trust: that instance is dropped (wasmtime refuses to enter it again anyway) and the next
call gets a new one, made on the warmer's thread when it can be, so no call sees another's
failure. Calls that run at once (``max_concurrency``, on several threads) each take an
instance of their own: the pool grows to the calls in flight, and keeps up to
``MAX_IDLE_INSTANCES`` between bursts. The last used is taken first, so calls one after
another keep to one instance (after a failure, the call may make one while the warmer
makes another: the spare waits).

Limits are the command modules' (:mod:`nex.agent.wasm.wasmtime_engine`): every instance has a
store with the function's memory split (:mod:`nex.agent.wasm.limits`), and an epoch deadline
set before each call. wasmtime does not say when it refused a component's memory growth,
and a component's memories are not visible from the host; so a call that traps in an
allocator (a frame whose name holds ``alloc``, ``oom`` or ``out_of_memory``, as Rust's
``handle_alloc_error`` or a ``cabi_realloc``) is reported out of memory. A component that
notices it itself (Python's ``MemoryError``) returns an ``err`` that starts with
``out of memory``: reported as such, and its instance, whose memory stays grown, replaced.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import deque
from typing import Callable

import wasmtime
from wasmtime import component

from nex.agent import protocol
from nex.agent.engine import ERROR, OUT_OF_MEMORY, TIMEOUT, CompileError, Outcome
from nex.agent.hostservices import FunctionHost
from nex.agent.wasm import component_values
from nex.agent.wasm.component_host import ComponentHost
from nex.agent.wasm.epoch import EpochTicker
from nex.agent.wasm.limits import StoreLimits
from nex.agent.wasm.output import LogLines, one_line
from nex.api.errors import FunctionError

log = logging.getLogger(__name__)

EXPORT = "handle"
MAX_IDLE_INSTANCES = 4
MAX_REPLY_BYTES = 8 * 1024 * 1024
OUT_OF_MEMORY_ERR = "out of memory"  # an err that starts so is an out-of-memory
WORLD = "nex:function/function"
_FRAME = re.compile(r"^\s*\d+:\s+0x[0-9a-f]+ - (?:.*!)?(.+)$")
_ALLOCATOR = re.compile(r"alloc|oom|out_of_memory", re.I)

Submit = Callable[[Callable[[], None]], None]


def _is_bytes(ty: object) -> bool:
    return isinstance(ty, component.ListType) and isinstance(ty.element, component.U8)


def is_component(header: bytes) -> bool:
    """The first 8 bytes of a binary: a component's, not a core module's (its layer field is 1)."""
    return header[:4] == b"\0asm" and header[6:8] == b"\x01\x00"


class _Instance:
    """A store with its limits and WASI settings, the component's instance in it, and its output."""

    __slots__ = ("store", "handle", "call", "stdout", "stderr")

    def __init__(self, engine: wasmtime.Engine, linker: component.Linker, compiled: component.Component,
                 limits: StoreLimits, deadline_ticks: int, env: list[tuple[str, str]]) -> None:
        self.stdout = LogLines("stdout")
        self.stderr = LogLines("stderr")
        self.store = wasmtime.Store(engine)
        self.store.set_limits(memory_size=limits.memory_size, table_elements=limits.table_elements,
                              instances=limits.instances, tables=limits.tables, memories=limits.memories)
        self.store.set_epoch_deadline(deadline_ticks)  # bounds the instantiation's own start functions
        wasi = wasmtime.WasiConfig()
        wasi.env = env
        wasi.stdout_custom = self._write_stdout
        wasi.stderr_custom = self._write_stderr
        self.store.set_wasi(wasi)  # before anything of WASI 0.2 runs, or wasmtime aborts the process
        try:
            instance = linker.instantiate(self.store, compiled)
            handle = instance.get_func(self.store, EXPORT)
        except BaseException:
            self.store.close()
            raise
        if handle is None:
            self.store.close()
            raise CompileError(f"the component exports no function {EXPORT}: it is not of the world {WORLD}")
        self.handle = handle
        self.call = component_values.HandleCall(handle)

    def _write_stdout(self, chunk: bytes) -> None:
        self.stdout.write(chunk)

    def _write_stderr(self, chunk: bytes) -> None:
        self.stderr.write(chunk)

    def logs(self) -> list[tuple[str, str]]:
        """The lines written since the last time, and a fresh start for the next call."""
        lines = self.stdout.lines() + self.stderr.lines()
        self.stdout, self.stderr = LogLines("stdout"), LogLines("stderr")
        return lines

    def close(self) -> None:
        # Explicitly, on a thread of the agent: left to the garbage collector, a store may be
        # freed while the interpreter exits, and wasmtime's output callbacks then abort the process.
        self.store.close()


class ComponentSandbox:
    """One function's compiled component, linked, and its kept instances."""

    def __init__(self, engine: wasmtime.Engine, compiled: component.Component, load: protocol.Load,
                 host: FunctionHost | None = None, ticker: EpochTicker | None = None,
                 submit: Submit | None = None) -> None:
        self.name = load.name
        self._engine = engine
        self._compiled = compiled
        self._host = host
        self._ticker = ticker
        self._submit = submit
        self._env = list(load.env.items())
        self._timeout_ms = load.timeout_ms
        self._memory_bytes = load.memory_bytes
        self._limits = StoreLimits.for_memory(load.memory_bytes)
        # Without a ticker the epoch never moves: any deadline is never reached.
        self._deadline_ticks = math.ceil(load.timeout_ms / 1000 / ticker.tick) + 1 if ticker is not None else 1
        component_values.install()
        self._linker = component.Linker(engine)
        self._linker.add_wasip2()
        ComponentHost(host).define(self._linker)
        self._idle: deque[_Instance] = deque()
        self._lock = threading.Lock()  # refill against close
        self._closed = False
        self._refilling = False
        self.instantiated = 0  # instances made: the first, and one for each failed call or burst
        first = self._first_instance()
        self._check_signature(first)
        self._idle.append(first)

    def startup_logs(self) -> list[tuple[str, str]]:
        return self._idle[0].logs() if self._idle else []

    def invoke(self, subject: str, payload: bytes) -> Outcome:
        started = time.perf_counter()
        if self._host is not None:
            self._host.begin()
        try:
            instance = self._take()
        except (wasmtime.WasmtimeError, CompileError) as exc:
            return Outcome(error=self._instantiation_error(exc),
                           duration_ms=round((time.perf_counter() - started) * 1000, 3))
        owed = self._ticker.begin() if self._ticker is not None else 0
        error: FunctionError | None = None
        data = b""
        failed = False
        try:
            component_values.set_epoch_deadline(instance.store, self._deadline_ticks + owed)
            result = instance.call(instance.store, subject, payload)
        except wasmtime.WasmtimeError as exc:
            error, failed = self._trap_error(exc), True
        except Exception as exc:  # a host value wasmtime-py could not lower: the instance is not to be trusted
            log.exception("function %s: the call failed in the host", self.name)
            error, failed = FunctionError(f"the call failed in the host: {exc}", ERROR), True
        finally:
            if self._ticker is not None:
                self._ticker.end()
        if not failed:
            if isinstance(result, str) and result.startswith(OUT_OF_MEMORY_ERR):
                # The component says so itself (a Python MemoryError): its memory stays grown, so it is replaced.
                error, failed = FunctionError(result, OUT_OF_MEMORY), True
            elif isinstance(result, str):
                error = FunctionError(result, ERROR)
            elif len(result) > MAX_REPLY_BYTES:
                error = FunctionError(f"the reply is over the limit of {MAX_REPLY_BYTES} bytes", ERROR)
            else:
                data = result
        logs = instance.logs()
        if failed:
            self._drop(instance)
        else:
            self._give_back(instance)
        return Outcome(data, error, round((time.perf_counter() - started) * 1000, 3), logs)

    def memory_used(self) -> int:
        """Unknown for a component (its memories are not visible from the host): 0."""
        return 0

    def idle_count(self) -> int:
        """Instances waiting for a call (for tests and benchmarks)."""
        return len(self._idle)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            while self._idle:
                self._idle.popleft().close()

    # -- instances --

    def _new_instance(self) -> _Instance:
        # The ticker runs meanwhile: a component's start functions are bounded by the call's time limit
        # too (one that loops forever would otherwise hold the function's thread for good).
        owed = self._ticker.begin() if self._ticker is not None else 0
        try:
            instance = _Instance(self._engine, self._linker, self._compiled, self._limits,
                                 self._deadline_ticks + owed, self._env)
        finally:
            if self._ticker is not None:
                self._ticker.end()
        self.instantiated += 1
        return instance

    def _first_instance(self) -> _Instance:
        try:
            return self._new_instance()
        except wasmtime.WasmtimeError as exc:
            raise CompileError(self._instantiation_error(exc).message) from None

    def _take(self) -> _Instance:
        # The most recently used first: calls one after another keep to one instance (and its
        # state), even when a refill and a call both made one after a failure.
        try:
            return self._idle.pop()
        except IndexError:  # a call in flight has each of the others, or the last one failed
            return self._new_instance()

    def _give_back(self, instance: _Instance) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < MAX_IDLE_INSTANCES:
                self._idle.append(instance)
                return
        instance.close()

    def _drop(self, instance: _Instance) -> None:
        """A failed call's instance: closed, and a new one made ahead of the next call, off its path."""
        if self._submit is None:
            instance.close()
            return
        self._submit(instance.close)
        if not self._idle and not self._refilling:
            self._refilling = True
            self._submit(self._refill)

    def _refill(self) -> None:
        """On the warmer's thread: one instance for the next call."""
        self._refilling = False
        with self._lock:
            if self._closed or self._idle:
                return
            try:
                self._idle.append(self._new_instance())
            except (wasmtime.WasmtimeError, CompileError) as exc:  # the next call instantiates and says why
                log.info("function %s: no instance made ahead: %s", self.name, one_line(exc))

    # -- errors --

    def _check_signature(self, instance: _Instance) -> None:
        ty = instance.handle.type(instance.store)
        params, result = ty.params, ty.result
        if not (len(params) == 2 and params[0][0] == "subject" and isinstance(params[0][1], component.String)
                and params[1][0] == "payload" and _is_bytes(params[1][1])
                and isinstance(result, component.ResultType) and _is_bytes(result.ok)
                and isinstance(result.err, component.String)):
            instance.close()
            raise CompileError(f"the component's {EXPORT} is not the one of the world {WORLD}: it must be"
                               f" {EXPORT}: func(subject: string, payload: list<u8>) -> result<list<u8>, string>")

    def _instantiation_error(self, exc: Exception) -> FunctionError:
        message = one_line(exc)
        if isinstance(exc, CompileError):
            return FunctionError(message, ERROR)
        if message.endswith("wasm trap: interrupt"):
            return FunctionError(f"cannot instantiate the component: its start-up ran longer than"
                                 f" {self._timeout_ms} ms", TIMEOUT)
        if "limit" in message:
            return FunctionError(f"cannot instantiate the component: {message} (under the limit of"
                                 f" {self._memory_bytes} bytes it may hold {self._limits.describe()})", OUT_OF_MEMORY)
        if "matching implementation was not found" in message:
            return FunctionError(f"the component cannot be linked (WASI 0.2 and the nex:host interfaces are all"
                                 f" it may import): {message}", ERROR)
        return FunctionError(f"cannot instantiate the component: {message}", ERROR)

    def _trap_error(self, exc: wasmtime.WasmtimeError) -> FunctionError:
        text = str(exc)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        cause = lines[-1] if lines else "the component trapped"
        cause = cause.removeprefix("wasm trap: ")
        if cause == "interrupt":
            return FunctionError(f"timed out: ran longer than {self._timeout_ms} ms", TIMEOUT)
        frames = [m.group(1) for m in map(_FRAME.match, text.splitlines()) if m]
        where = f" in {frames[0]}" if frames else ""
        if any(_ALLOCATOR.search(frame) for frame in frames):
            return FunctionError(f"out of memory: the limit is {self._memory_bytes} bytes ({cause}{where})",
                                 OUT_OF_MEMORY)
        return FunctionError(f"{cause}{where}", ERROR)
