"""A thread that runs one function's jobs in order, for objects bound to their thread.

A QuickJS context must only be called from the thread that created it, so each
function gets one :class:`ContextThread`: the context is built, called and freed
there, while the asyncio loop awaits results. A runaway function blocks only its
own thread.

Threads are daemons: a call stuck in JavaScript (up to its time limit) must not
hold the agent's exit. On Linux they run SCHED_BATCH, so that the loop handing them
a call is not preempted by the thread it woke (see :func:`_no_wakeup_preemption`).
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")

# Set with threading.stack_size() by the agent. It must hold the JavaScript stack
# (nex.agent.js.quickjs_engine.JS_STACK_BYTES) plus the Python and C frames below it. Only the
# pages a thread touches count in its RSS; this bounds the address space.
THREAD_STACK_BYTES = 1024 * 1024
MAX_BATCH = 32


class ContextThread:
    """Runs jobs one at a time, in submission order, on a thread of its own."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.name = name
        self._loop = loop or asyncio.get_running_loop()
        self._jobs: queue.SimpleQueue[tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]] | None]
        self._jobs = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` on the thread; the future completes on the loop."""
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((future, fn, args))
        return future

    def stop(self) -> None:
        """End the thread once the jobs queued so far have run."""
        self._jobs.put(None)

    def join(self, timeout: float) -> bool:
        """Wait for the thread to end (blocking); False if it still runs after ``timeout``."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        _no_wakeup_preemption()
        # Jobs that queued while one ran are run back to back and their results handed
        # to the loop in one wake-up: under load that saves most of the cross-thread cost.
        while (job := self._jobs.get()) is not None:
            done: list[tuple[Callable[..., None], asyncio.Future[Any], Any]] = []
            stopping = False
            while True:
                future, fn, args = job
                try:
                    done.append((_set_result, future, fn(*args)))
                except Exception as exc:  # handed to the awaiting coroutine
                    done.append((_set_exception, future, _detached(exc)))
                if len(done) >= MAX_BATCH:
                    break
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
            self._deliver(done)
            if stopping:
                return

    def _deliver(self, done: list[tuple[Callable[..., None], asyncio.Future[Any], Any]]) -> None:
        try:
            self._loop.call_soon_threadsafe(_settle_all, done)
        except RuntimeError:
            pass  # the loop is closed: the agent is exiting and nobody waits


def _no_wakeup_preemption() -> None:
    """This thread, woken by the loop's job, does not preempt the loop (Linux SCHED_BATCH).

    Preempting it gains nothing: the loop holds the GIL, which the woken thread needs
    first; on a busy machine it cost a context switch there and back on every call.
    Measured through a node (bench/js_roundtrip.py, 2 pairs): p50 1.65× and 1.69× the
    echo against 1.80× and 1.74×, the agent's CPU a call 253–273 µs against 293–303 µs.
    The thread's share of the CPU is otherwise the same (SCHED_BATCH keeps nice 0)."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):
        pass  # not Linux, or not allowed: the default policy, a little slower


def _detached(exc: Exception) -> Exception:
    # The traceback's frames may hold objects of this thread (a QuickJS context):
    # drop them here, so they are not freed on the loop's thread.
    exc.__traceback__ = exc.__context__ = exc.__cause__ = None
    return exc


def _settle_all(done: list[tuple[Callable[..., None], asyncio.Future[Any], Any]]) -> None:
    for setter, future, value in done:
        setter(future, value)


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
