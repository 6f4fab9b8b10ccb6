"""Wall-clock time for wasmtime's epoch interruption: the time limit of Wasm calls
(:mod:`nex.agent.wasm.wasmtime_engine`, whose docstring says how a deadline is set)."""

from __future__ import annotations

import threading
import time

import wasmtime


class EpochTicker:
    """Advances an engine's epoch by one per ``tick`` seconds of wall-clock time, on a thread,
    while a call runs (between :meth:`begin` and :meth:`end`). With no call, the thread
    sleeps: an idle agent woken 100 times a second cost 0.9 % of a core for nothing, and
    a node starts its agents before any function (NodeConfig.warm_agents). Deadlines are
    relative to the epoch when they are set, so a paused epoch changes none."""

    def __init__(self, engine: wasmtime.Engine, tick: float) -> None:
        self._engine = engine
        self._tick = tick
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopped = False
        self._calls = 0
        self._started = time.monotonic()  # when the current stretch of calls began
        self._ticks = 0  # added since then; written under the lock
        # Not named "wasm-...": at exit the agent waits for the threads so named, its function
        # threads, before it closes the engine; this one only ends in close(), so the agent
        # waited its whole THREAD_JOIN_S on every exit and never closed the engine.
        self._thread = threading.Thread(target=self._run, name="wasm epoch ticker", daemon=True)
        self._thread.start()

    @property
    def tick(self) -> float:
        """Seconds of wall-clock time per epoch."""
        return self._tick

    def begin(self) -> int:
        """A call starts; returns the ticks its deadline must add for the ticker's lag (:meth:`lag`)."""
        with self._lock:
            self._calls += 1
            if self._calls == 1:  # the first call after a pause: count from now
                self._started, self._ticks = time.monotonic(), 0
                self._changed.notify()
            return self._lag()

    def end(self) -> None:
        with self._lock:
            self._calls -= 1

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._changed.notify()
        self._thread.join()

    def lag(self) -> int:
        """Ticks already due that the thread has not added yet (it woke late, on a busy host).
        A deadline set now must count them too: the catch-up would otherwise end a call early."""
        with self._lock:
            return self._lag()

    def _lag(self) -> int:
        if self._calls == 0:
            return 0
        return max(0, int((time.monotonic() - self._started) / self._tick) - self._ticks)

    def _run(self) -> None:
        with self._lock:
            while not self._stopped:
                if self._calls == 0:
                    self._changed.wait()  # until a call begins
                    continue
                self._changed.wait(self._tick)
                if self._calls == 0 or self._stopped:
                    continue
                # Catch up on late wake-ups, so a deadline in ticks stays one in seconds.
                due = int((time.monotonic() - self._started) / self._tick)
                while self._ticks < due:
                    self._engine.increment_epoch()
                    self._ticks += 1
