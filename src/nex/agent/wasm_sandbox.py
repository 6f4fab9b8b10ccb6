"""WebAssembly functions: WASI preview 1 command modules run by wasmtime.

The contract with the module, the same in every language and without an SDK:
argv is ``[name, subject]``, stdin is the payload, what it writes to stdout is the
reply, every line it writes to stderr is one log message, its environment is
the deploy request's. Besides WASI it may import the host services, the module
``nex`` of :mod:`nex.agent.host_wasm`. A call that traps, exits with a code other than 0, runs past
its time or out of memory gets an error reply.

Every call runs in a fresh Store and instance: nothing leaks from one call to the
next, and a trap leaves nothing half-updated. The module is compiled once per
function (or loaded compiled from :mod:`nex.agent.module_cache`) and
pre-linked, so a call costs an instantiation, not a compile.

Time limit: epoch interruption. One ticker thread per agent advances the engine's
epoch by wall-clock time; a store's deadline is its timeout in ticks. Compiled
code checks the epoch at function entries and loop back-edges, which costs a few
percent (fuel costs much more, and counts instructions, not time). A call is
stopped between ``timeout`` and ``timeout + EPOCH_TICK_S``; a call blocked in the
host (WASI's ``poll_oneoff`` sleeping) is not interrupted until it comes back.

Memory limit: the store's limiter refuses to grow linear memory past the limit
(``memory.grow`` returns -1, so malloc returns NULL). wasmtime does not report that
refusal, so a call that traps with at least ``OUT_OF_MEMORY_SHARE`` of the limit in
use is reported as out of memory: a module that cannot allocate aborts (C's
abort(), Rust's handle_alloc_error), which is a trap, and allocators grow memory
in chunks, so the failed grow leaves some of the limit unused.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path

import wasmtime

from nex.agent import protocol
from nex.agent.engine import ERROR, EXIT, OUT_OF_MEMORY, TIMEOUT, CompileError, Outcome
from nex.agent.host_wasm import WasmHost
from nex.agent.hostservices import FunctionHost, HostServices
from nex.agent.module_cache import ModuleCache
from nex.agent.protocol import ENV_CACHE_DIR
from nex.api.errors import FunctionError

log = logging.getLogger(__name__)

EPOCH_TICK_S = 0.01
WASM_STACK_BYTES = 512 * 1024  # the function threads' stack must be larger (see nex.agent.wasm)
MAX_REPLY_BYTES = 8 * 1024 * 1024
MAX_LOG_LINES = 1000
MAX_LOG_LINE_BYTES = 64 * 1024
OUT_OF_MEMORY_SHARE = 0.75


class EpochTicker:
    """Advances an engine's epoch by one per ``tick`` seconds of wall-clock time, on a thread."""

    def __init__(self, engine: wasmtime.Engine, tick: float) -> None:
        self._engine = engine
        self._tick = tick
        self._stopped = threading.Event()
        # Not named "wasm-...": at exit the agent waits for the threads so named, its function
        # threads, before it closes the engine; this one only ends in close(), so the agent
        # waited its whole THREAD_JOIN_S on every exit and never closed the engine.
        self._thread = threading.Thread(target=self._run, name="wasm epoch ticker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        started = time.monotonic()
        ticks = 0
        while not self._stopped.wait(self._tick):
            # Catch up on late wake-ups, so a deadline in ticks stays one in seconds.
            due = int((time.monotonic() - started) / self._tick)
            while ticks < due:
                self._engine.increment_epoch()
                ticks += 1


class WasmEngine:
    """The :class:`nex.agent.engine.Engine` of the wasm agent: one wasmtime engine for all its functions."""

    name = "wasm"
    fresh_thread_after_out_of_memory = False
    # Set by the agent once it is connected; None: modules that import `nex` do not link.
    host_services: HostServices | None = None

    def __init__(self, cache_dir: Path | None) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.max_wasm_stack = WASM_STACK_BYTES
        self._engine = wasmtime.Engine(config)
        self.modules = ModuleCache(self._engine, cache_dir)
        self._ticker = EpochTicker(self._engine, EPOCH_TICK_S)

    @classmethod
    def from_environment(cls) -> WasmEngine:
        cache_dir = os.environ.get(ENV_CACHE_DIR)
        return cls(Path(cache_dir) if cache_dir else None)

    def build(self, load: protocol.Load) -> WasmSandbox:
        if not load.artifact_path:
            raise CompileError("the load request names no module file")
        try:
            module = self.modules.module(Path(load.artifact_path), load.artifact_sha256)
        except wasmtime.WasmtimeError as exc:
            raise CompileError(f"the module does not compile: {_one_line(exc)}") from None
        except OSError as exc:
            raise CompileError(f"cannot read the module {load.artifact_path}: {exc.strerror}") from None
        host = self.host_services.scope(load) if self.host_services is not None else None
        return WasmSandbox(self._engine, module, load, host)

    def close(self) -> None:
        self._ticker.stop()


class WasmSandbox:
    """One function's pre-linked module; every call instantiates it in a fresh store."""

    def __init__(self, engine: wasmtime.Engine, module: wasmtime.Module, load: protocol.Load,
                 host: FunctionHost | None = None) -> None:
        if not any(export.name == "_start" for export in module.exports):
            raise CompileError("the module exports no _start function: it is not a WASI command"
                               " (build an executable with a main function, not a library or reactor)")
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        self._host = host
        if host is not None and any(imported.module == "nex" for imported in module.imports):
            WasmHost(host).define(linker)
        try:
            self._pre = linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise CompileError(f"the module cannot be linked (WASI preview 1 and the nex host imports are all"
                               f" it may import): {_one_line(exc)}") from None
        self._engine = engine
        self._name = load.name
        self._env = list(load.env.items())
        self._timeout_ms = load.timeout_ms
        self._memory_bytes = load.memory_bytes
        self._deadline_ticks = math.ceil(load.timeout_ms / 1000 / EPOCH_TICK_S) + 1
        self._memory_used = 0

    def startup_logs(self) -> list[tuple[str, str]]:
        return []  # nothing runs before the first call

    def invoke(self, subject: str, payload: bytes) -> Outcome:
        started = time.perf_counter()
        if self._host is not None:
            self._host.begin()
        stdout = _Reply(MAX_REPLY_BYTES)
        stderr = _LogLines("stderr")
        store = wasmtime.Store(self._engine)
        store.set_limits(memory_size=self._memory_bytes)
        store.set_epoch_deadline(self._deadline_ticks)
        store.set_wasi(self._wasi(subject, payload, stdout, stderr))
        instance: wasmtime.Instance | None = None
        error: FunctionError | None
        try:
            instance = self._pre.instantiate(store)
            start = instance.exports(store)["_start"]
            assert isinstance(start, wasmtime.Func)
            start(store)
            error = stdout.error
        except wasmtime.ExitTrap as exited:
            error = stdout.error if exited.code == 0 else FunctionError(f"exited with code {exited.code}", EXIT)
        except wasmtime.Trap as trap:
            error = self._trap_error(trap, self._memory_at_limit(store, instance))
        except wasmtime.WasmtimeError as exc:  # instantiation: its initial memory is over the limit
            message = _one_line(exc)
            kind = OUT_OF_MEMORY if "limit" in message else ERROR
            error = FunctionError(f"cannot instantiate the module: {message}", kind)
        self._memory_used = self._linear_memory(store, instance)
        # Now, on this thread: left to the garbage collector, a store may be freed while
        # the interpreter exits, and wasmtime's stdout callback then aborts the process.
        store.close()
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        return Outcome(stdout.data() if error is None else b"", error, duration_ms, stderr.lines())

    def memory_used(self) -> int:
        """Linear memory of the last call's instance (calls do not share one)."""
        return self._memory_used

    def close(self) -> None:
        self._pre.close()

    def _wasi(self, subject: str, payload: bytes, stdout: _Reply, stderr: _LogLines) -> wasmtime.WasiConfig:
        wasi = wasmtime.WasiConfig()
        wasi.argv = [self._name, subject]
        wasi.env = self._env
        wasi.stdout_custom = stdout.write
        wasi.stderr_custom = stderr.write
        if payload:
            _set_stdin(wasi, payload)
        return wasi

    def _trap_error(self, trap: wasmtime.Trap, memory_at_limit: bool) -> FunctionError:
        if trap.trap_code == wasmtime.TrapCode.INTERRUPT:
            return FunctionError(f"timed out: ran longer than {self._timeout_ms} ms", TIMEOUT)
        where = f" in {trap.frames[0].func_name}" if trap.frames and trap.frames[0].func_name else ""
        message = f"{_trap_message(trap)}{where}"
        if memory_at_limit:
            return FunctionError(f"out of memory: the limit is {self._memory_bytes} bytes ({message})", OUT_OF_MEMORY)
        return FunctionError(message, ERROR)

    def _memory_at_limit(self, store: wasmtime.Store, instance: wasmtime.Instance | None) -> bool:
        return self._linear_memory(store, instance) >= OUT_OF_MEMORY_SHARE * self._memory_bytes

    @staticmethod
    def _linear_memory(store: wasmtime.Store, instance: wasmtime.Instance | None) -> int:
        if instance is None:
            return 0
        memory = instance.exports(store).get("memory")
        return memory.data_len(store) if isinstance(memory, wasmtime.Memory) else 0


class _Reply:
    """Collects stdout, up to ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._limit = limit
        self.error: FunctionError | None = None

    def write(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self._limit:
            self._chunks.append(chunk)
        elif self.error is None:
            self._chunks.clear()
            self.error = FunctionError(f"the reply is over the limit of {self._limit} bytes", ERROR)

    def data(self) -> bytes:
        return b"".join(self._chunks)


class _LogLines:
    """Splits a stream into lines: one log message each, capped in number and length."""

    def __init__(self, stream: str) -> None:
        self._stream = stream
        self._lines: list[tuple[str, str]] = []
        self._partial = b""
        self._dropped = 0

    def write(self, chunk: bytes) -> None:
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        for line in complete:
            self._add(line)
        if len(self._partial) > MAX_LOG_LINE_BYTES:
            self._add(self._partial)
            self._partial = b""

    def lines(self) -> list[tuple[str, str]]:
        if self._partial:
            self._add(self._partial)
            self._partial = b""
        if self._dropped:
            self._lines.append((self._stream, f"nex: {self._dropped} log lines dropped"))
            self._dropped = 0
        return self._lines

    def _add(self, line: bytes) -> None:
        if len(self._lines) >= MAX_LOG_LINES:
            self._dropped += 1
            return
        self._lines.append((self._stream, line[:MAX_LOG_LINE_BYTES].decode(errors="replace")))


def _set_stdin(wasi: wasmtime.WasiConfig, payload: bytes) -> None:
    # WasiConfig takes stdin only from a file: a memory file, opened by wasmtime
    # through /proc at a fresh offset, then closed here.
    fd = os.memfd_create("nex-wasm-stdin", os.MFD_CLOEXEC)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
        wasi.stdin_file = f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _trap_message(trap: wasmtime.Trap) -> str:
    # The message is a backtrace, then "Caused by:" and the cause, on its last line.
    lines = [line.strip() for line in trap.message.splitlines() if line.strip()]
    return lines[-1] if lines else "the module trapped"


def _one_line(exc: Exception) -> str:
    # wasmtime's errors read "what\n\nCaused by:\n    why"
    parts = [line.strip() for line in str(exc).splitlines() if line.strip() and line.strip() != "Caused by:"]
    return ": ".join(parts)
