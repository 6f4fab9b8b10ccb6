"""WebAssembly functions: WASI preview 1 command modules run by wasmtime.

(A WASI 0.2 component is told apart by its header and built by :mod:`nex.agent.wasm.components`;
everything below is about command modules.)

The contract with the module, the same in every language and without an SDK:
argv is ``[name, subject]``, stdin is the payload, what it writes to stdout is the
reply, every line it writes to stderr is one log message, its environment is
the deploy request's. Besides WASI it may import the host services, the module
``nex`` of :mod:`nex.agent.wasm.host`. A call that traps, exits with a code other than 0, runs past
its time or out of memory gets an error reply.

Every call runs in a fresh Store and instance: nothing leaks from one call to the
next, and a trap leaves nothing half-updated. The module is compiled once per
function (or loaded compiled from :mod:`nex.agent.wasm.module_cache`) and
pre-linked, so an instance costs an instantiation, not a compile.

Warm pool: each function keeps up to ``WARM_INSTANCES`` instances made ahead of
time and never used (a store with its limits, the WASI settings that do not depend
on the call, the instance, its ``_start``). A call takes one, adds what belongs to
the call (argv with the subject, stdin) and runs it; the engine's one warmer thread
makes the replacement and frees the call's store, off the call's path. A call that
finds the pool empty (a burst) makes its own instance, as every call did before.
The pool is the only state that outlives a call, and it holds only instances no
call has touched, so no state leaks through it. Its cost is memory: the pages an
instance's initialisation writes (its data segments) and wasmtime's bookkeeping,
about 11 KiB for a small C module, for each of the ``WARM_INSTANCES`` of every
function (``NEX_WASM_WARM_INSTANCES`` in the agent's environment changes it).

Threads: ``invoke`` may run on several threads at once (the engine's
``parallel_calls``): each call has its own store and instance, the pool is a deque
and the host's per-call state is per thread. wasmtime releases the GIL while wasm
runs, so such calls run in parallel.

Time limit: epoch interruption. One ticker thread per agent advances the engine's
epoch by wall-clock time while any call runs (it sleeps in between); a store's
deadline is its timeout in ticks. Compiled
code checks the epoch at function entries and loop back-edges, which costs a few
percent (fuel costs much more, and counts instructions, not time). A call is
stopped between ``timeout`` and ``timeout + EPOCH_TICK_S``; a call blocked in the
host (WASI's ``poll_oneoff`` sleeping) is not interrupted until it comes back.

Memory limit: the function's limit is shared among its linear memory and its
tables, and its store may hold only so many instances, tables and memories
(:mod:`nex.agent.wasm.limits`). The store's limiter refuses to grow linear memory or
a table past its share (``memory.grow`` and ``table.grow`` return -1, so malloc returns
NULL). wasmtime does not report that refusal, so a call that traps with at least
``OUT_OF_MEMORY_SHARE`` of the linear memory, or of an exported table, in use is
reported as out of memory: a module that cannot allocate aborts (C's abort(), Rust's
handle_alloc_error), which is a trap, and allocators grow memory in chunks, so the
failed grow leaves some of the limit unused. A module whose initial memory or tables
do not fit cannot be instantiated, and says so. The wasm GC and exceptions proposals
are off: their objects would live in a heap of their own, beside the limit.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

import wasmtime

from nex.agent import protocol
from nex.agent.engine import ERROR, EXIT, OUT_OF_MEMORY, TIMEOUT, CompileError, Outcome
from nex.agent.hostservices import FunctionHost, HostServices
from nex.agent.protocol import ENV_CACHE_DIR
from nex.agent.wasm.components import ComponentSandbox, is_component
from nex.agent.wasm.epoch import EpochTicker
from nex.agent.wasm.host import WasmHost
from nex.agent.wasm.limits import StoreLimits
from nex.agent.wasm.module_cache import ModuleCache
from nex.agent.wasm.output import LogLines as _LogLines, one_line as _one_line
from nex.api.errors import FunctionError

log = logging.getLogger(__name__)

EPOCH_TICK_S = 0.01
WASM_STACK_BYTES = 512 * 1024  # the function threads' stack must be larger (see nex.agent.wasm)
MAX_REPLY_BYTES = 8 * 1024 * 1024
OUT_OF_MEMORY_SHARE = 0.75
WARM_INSTANCES = 2  # per function: bounds the pool's memory with many functions deployed
# The agent's environment may set another pool size (0: no pool, every call instantiates).
ENV_WARM_INSTANCES = "NEX_WASM_WARM_INSTANCES"
# Past this many jobs queued on the warmer (a saturating load), a call frees its own store:
# stores waiting to be freed hold their instance's memory.
MAX_WARMER_BACKLOG = 64


class Warmer:
    """Does the work around calls off their path, on a thread of its own: refills the warm
    pools of an engine's sandboxes and closes the stores of finished calls.

    One thread for all the functions of the agent: a refill is an instantiation (tens of
    microseconds), and wasmtime releases the GIL while it runs.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        # Not named "wasm-...": the agent waits at exit for the function threads so named.
        self._thread = threading.Thread(target=self._run, name="wasm warmer", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def busy(self) -> bool:
        """More than MAX_WARMER_BACKLOG jobs wait."""
        return self._jobs.qsize() > MAX_WARMER_BACKLOG

    def stop(self) -> None:
        """Once the jobs submitted so far are done."""
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:  # a bug: calls still run, on instances they make themselves
                log.exception("wasm warmer: %r failed", job)


class WasmEngine:
    """The :class:`nex.agent.engine.Engine` of the wasm agent: one wasmtime engine for all its functions."""

    name = "wasm"
    parallel_calls = True

    def __init__(self, cache_dir: Path | None, warm_instances: int = WARM_INSTANCES,
                 host_services: HostServices | None = None) -> None:
        # None: modules that import `nex` do not link.
        self._host_services = host_services
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.max_wasm_stack = WASM_STACK_BYTES
        # Their objects live in wasmtime's GC heap, which the store limits bound only
        # separately from linear memory (see nex.agent.wasm.limits): off.
        config.wasm_gc = False
        config.wasm_exceptions = False
        self._engine = wasmtime.Engine(config)
        self.modules = ModuleCache(self._engine, cache_dir)
        self._ticker = EpochTicker(self._engine, EPOCH_TICK_S)
        self._warm_instances = warm_instances
        self._warmer = Warmer() if warm_instances > 0 else None

    @classmethod
    def from_environment(cls, host_services: HostServices | None = None) -> WasmEngine:
        cache_dir = os.environ.get(ENV_CACHE_DIR)
        warm = os.environ.get(ENV_WARM_INSTANCES, "")
        if warm and not (warm.isdigit() and int(warm) <= 100):
            log.error("%s must be a number of instances from 0 to 100, not %r: using %d",
                      ENV_WARM_INSTANCES, warm, WARM_INSTANCES)
            warm = ""
        return cls(Path(cache_dir) if cache_dir else None, int(warm) if warm else WARM_INSTANCES, host_services)

    def build(self, load: protocol.Load) -> WasmSandbox | ComponentSandbox:
        if not load.artifact_path:
            raise CompileError("the load request names no module file")
        path = Path(load.artifact_path)
        try:
            with path.open("rb") as f:
                header = f.read(8)
        except OSError as exc:
            raise CompileError(f"cannot read the module {load.artifact_path}: {exc.strerror}") from None
        kind = "component" if is_component(header) else "module"
        try:
            compiled = (self.modules.component if kind == "component" else self.modules.module)(
                path, load.artifact_sha256)
        except wasmtime.WasmtimeError as exc:
            raise CompileError(f"the {kind} does not compile: {_one_line(exc)}") from None
        except OSError as exc:
            raise CompileError(f"cannot read the {kind} {load.artifact_path}: {exc.strerror}") from None
        host = self._host_services.scope(load) if self._host_services is not None else None
        if kind == "component":
            # A WASI 0.2 component (nex.agent.wasm.components): compiled once, its instances kept.
            return ComponentSandbox(self._engine, compiled, load, host, self._ticker,
                                    self._warmer.submit if self._warmer is not None else None)
        sandbox = WasmSandbox(self._engine, compiled, load, host, self._warmer, self._warm_instances, self._ticker)
        sandbox.want_refill()  # the first call is warm too
        return sandbox

    def close(self) -> None:
        if self._warmer is not None:
            self._warmer.stop()
        self._ticker.stop()


class _Instance:
    """A store with its limits, output collectors and WASI settings, and (once made) its instance.

    Used by one call, then closed: a warm one was made ahead of that call and never used.
    """

    __slots__ = ("store", "wasi", "stdout", "stderr", "instance", "start")

    def __init__(self, engine: wasmtime.Engine, limits: StoreLimits, deadline_ticks: int,
                 env: list[tuple[str, str]]) -> None:
        self.stdout = _Reply(MAX_REPLY_BYTES)
        self.stderr = _LogLines("stderr")
        self.store = wasmtime.Store(engine)
        self.store.set_limits(memory_size=limits.memory_size, table_elements=limits.table_elements,
                              instances=limits.instances, tables=limits.tables, memories=limits.memories)
        # Also bounds a start section run by the instantiation (the warmer's or a call's).
        self.store.set_epoch_deadline(deadline_ticks)
        self.wasi = wasmtime.WasiConfig()
        self.wasi.env = env
        self.wasi.stdout_custom = self.stdout.write
        self.wasi.stderr_custom = self.stderr.write
        self.instance: wasmtime.Instance | None = None
        self.start: wasmtime.Func | None = None

    def instantiate(self, pre: wasmtime.InstancePre) -> None:
        self.instance = pre.instantiate(self.store)
        start = self.instance.exports(self.store)["_start"]
        assert isinstance(start, wasmtime.Func)
        self.start = start

    def close(self) -> None:
        # Explicitly, on a thread of the agent: left to the garbage collector, a store may be
        # freed while the interpreter exits, and wasmtime's stdout callback then aborts the process.
        self.store.close()


class WasmSandbox:
    """One function's pre-linked module, and its pool of warm instances; every call gets a fresh one."""

    def __init__(self, engine: wasmtime.Engine, module: wasmtime.Module, load: protocol.Load,
                 host: FunctionHost | None = None, warmer: Warmer | None = None,
                 warm_instances: int = WARM_INSTANCES, ticker: EpochTicker | None = None) -> None:
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
        self.name = load.name
        self._engine = engine
        self._env = list(load.env.items())
        self._timeout_ms = load.timeout_ms
        self._memory_bytes = load.memory_bytes
        self._limits = StoreLimits.for_memory(load.memory_bytes)
        self._deadline_ticks = math.ceil(load.timeout_ms / 1000 / EPOCH_TICK_S) + 1
        self._ticker = ticker
        self._memory_used = 0
        self._warmer = warmer if warm_instances > 0 else None
        self._pool_size = warm_instances
        self._warm: deque[_Instance] = deque()
        self._lock = threading.Lock()  # refill against close
        self._refill_queued = False
        self._closed = False
        self._warming_failed = False
        self.cold_instances = 0  # calls that found the pool empty and instantiated on their path

    def startup_logs(self) -> list[tuple[str, str]]:
        return []  # nothing runs before the first call

    def invoke(self, subject: str, payload: bytes) -> Outcome:
        started = time.perf_counter()
        if self._host is not None:
            self._host.begin()
        call = self._take_warm() or self._new_instance()
        call.wasi.argv = [self.name, subject]
        if payload:
            _set_stdin(call.wasi, payload)
        store = call.store
        store.set_wasi(call.wasi)
        owed = self._ticker.begin() if self._ticker is not None else 0
        try:
            store.set_epoch_deadline(self._deadline_ticks + owed)
            error = self._run_call(call, store)
        finally:
            if self._ticker is not None:
                self._ticker.end()
        self._memory_used = self._linear_memory(store, call.instance)
        # Its output is all collected by now (wasmtime writes it during the call): the
        # store can be freed after the reply, by the warmer.
        if self._warmer is not None and not self._warmer.busy():
            self._warmer.submit(call.close)
        else:
            call.close()
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        return Outcome(call.stdout.data() if error is None else b"", error, duration_ms, call.stderr.lines())

    def _run_call(self, call: _Instance, store: wasmtime.Store) -> FunctionError | None:
        """Run the call's ``_start`` (instantiating first when the pool was empty); its error, if any."""
        try:
            if call.start is None:  # the pool was empty: instantiate on the call's path
                self.cold_instances += 1
                call.instantiate(self._pre)
            assert call.start is not None
            call.start(store)
            return call.stdout.error
        except wasmtime.ExitTrap as exited:
            return call.stdout.error if exited.code == 0 else FunctionError(f"exited with code {exited.code}", EXIT)
        except wasmtime.Trap as trap:
            return self._trap_error(trap, self._memory_at_limit(store, call.instance))
        except wasmtime.WasmtimeError as exc:  # instantiation: its initial memory or tables are over the limit
            message = _one_line(exc)
            if "limit" in message:
                return FunctionError(f"cannot instantiate the module: {message} (under the limit of"
                                     f" {self._memory_bytes} bytes it may hold {self._limits.describe()})",
                                     OUT_OF_MEMORY)
            return FunctionError(f"cannot instantiate the module: {message}", ERROR)

    def memory_used(self) -> int:
        """Linear memory of the last call's instance (calls do not share one)."""
        return self._memory_used

    def warm_count(self) -> int:
        """Instances ready in the pool (for tests and benchmarks)."""
        return len(self._warm)

    def want_refill(self) -> None:
        """Ask the warmer to fill the pool up again; about one request is queued at a time."""
        # No lock on a call's path (the warmer holds self._lock while it instantiates): two
        # calls that both queue a refill at once cost one more look at a full pool.
        if self._warmer is None or self._closed or self._warming_failed or self._refill_queued:
            return
        self._refill_queued = True
        self._warmer.submit(self.refill)

    def refill(self) -> None:
        """On the warmer's thread: make instances until the pool is full."""
        self._refill_queued = False
        while len(self._warm) < self._pool_size:
            with self._lock:  # close() waits for an instantiation in progress
                if self._closed:
                    return
                warm = self._new_instance()
                try:
                    warm.instantiate(self._pre)
                except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
                    # Calls instantiate for themselves and report why it fails.
                    warm.close()
                    self._warming_failed = True
                    log.info("function %s: no warm instances: %s", self.name, _one_line(exc))
                    return
                self._warm.append(warm)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            while self._warm:
                self._warm.popleft().close()
        self._pre.close()

    def _take_warm(self) -> _Instance | None:
        try:
            warm = self._warm.popleft()
        except IndexError:
            warm = None
        self.want_refill()
        return warm

    def _new_instance(self) -> _Instance:
        return _Instance(self._engine, self._limits, self._deadline_ticks, self._env)

    def _trap_error(self, trap: wasmtime.Trap, memory_at_limit: bool) -> FunctionError:
        if trap.trap_code == wasmtime.TrapCode.INTERRUPT:
            return FunctionError(f"timed out: ran longer than {self._timeout_ms} ms", TIMEOUT)
        where = f" in {trap.frames[0].func_name}" if trap.frames and trap.frames[0].func_name else ""
        message = f"{_trap_message(trap)}{where}"
        if memory_at_limit:
            return FunctionError(f"out of memory: the limit is {self._memory_bytes} bytes ({message})", OUT_OF_MEMORY)
        return FunctionError(message, ERROR)

    def _memory_at_limit(self, store: wasmtime.Store, instance: wasmtime.Instance | None) -> bool:
        if self._linear_memory(store, instance) >= OUT_OF_MEMORY_SHARE * self._limits.memory_size:
            return True
        if instance is None:
            return False
        # Only the tables it exports can be seen from here (C modules usually export none).
        return any(isinstance(export, wasmtime.Table)
                   and export.size(store) >= OUT_OF_MEMORY_SHARE * self._limits.table_elements
                   for export in instance.exports(store).by_index)

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
