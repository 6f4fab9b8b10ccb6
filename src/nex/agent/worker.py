"""A thread that runs one function's jobs in order, for objects bound to their thread.

A QuickJS context must only be called from the thread that created it, so each
function gets one :class:`ContextThread`: the context is built, called and freed
there, while the asyncio loop awaits results. A runaway function blocks only its
own thread.

A job's result comes back to the loop one of two ways. Usually the thread hands
the results of the jobs it ran back to back to the loop in one wake-up
(``call_soon_threadsafe``). For a call that is likely quick, the loop may instead
block for it, the GIL released, for up to ``wait_s`` (``call(..., wait_s=)``): the
result is then handed straight over and the loop goes on with it at once, without a
byte on its self-pipe, an ``epoll`` round and a task switch (about 40 µs of the
agent's CPU a call, docs/performance.md). A job that needs the loop while the loop
waits for it (a host call) first lets it go (:func:`release_loop`).

Threads are daemons: a call stuck in JavaScript (up to its time limit) must not
hold the agent's exit. On Linux they run SCHED_BATCH, so that the loop handing them
a call is not preempted by the thread it woke (see :func:`_no_wakeup_preemption`),
and they share the loop's CPU while their jobs are quick (:mod:`nex.agent.cpus`).
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from typing import Any, Callable, TypeVar

from nex.agent import cpus

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
        self._jobs: queue.SimpleQueue[_Job | None]
        self._jobs = queue.SimpleQueue()
        self._beside = False  # the thread is pinned to the loop's CPU (nex.agent.cpus)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., T], *args: Any, wait_s: float = 0.0, a_call: bool = False) -> asyncio.Future[T]:
        """Run ``fn(*args)`` on the thread; the future completes on the loop.

        With ``wait_s``, the loop's thread blocks up to that long for the job to end (the GIL
        released) and, if it did, returns the future already done: a quick call costs no
        wake-up of the loop and no turn of it. Past ``wait_s``, or as soon as the job needs
        the loop (:func:`release_loop`), the future completes on the loop as without it.
        ``a_call``: the job is a function's call, whose time and waiting decide where the
        thread runs (:class:`nex.agent.cpus.Follower`); other jobs (a build, a stats read) do not."""
        future: asyncio.Future[T] = self._loop.create_future()
        if wait_s <= 0:
            self._jobs.put((future, fn, args, None, a_call))
            return future
        handoff = _Handoff()
        self._jobs.put((future, fn, args, handoff, a_call))
        handoff.wait(wait_s, future, self._beside)
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
        placement = cpus.Follower()  # beside the loop while its jobs are quick (nex.agent.cpus)
        follow = cpus.active()  # set before the agent loads any function
        # Jobs that queued while one ran are run back to back and their results handed
        # to the loop in one wake-up: under load that saves most of the cross-thread cost.
        while (job := self._jobs.get()) is not None:
            done: list[tuple[Callable[..., None], asyncio.Future[Any], Any]] = []
            stopping = False
            while True:
                future, fn, args, handoff, a_call = job
                if handoff is not None:
                    _running.handoff = handoff
                started = time.perf_counter()
                try:
                    settle: tuple[Callable[..., None], Any] = (_set_result, fn(*args))
                except Exception as exc:  # handed to the awaiting coroutine
                    settle = (_set_exception, _detached(exc))
                if handoff is None:
                    done.append((settle[0], future, settle[1]))
                else:
                    _running.handoff = None
                    if not handoff.hand(*settle):
                        done.append((settle[0], future, settle[1]))
                if follow and a_call:
                    placement.after(time.perf_counter() - started, waited=handoff is not None)
                    self._beside = placement.beside_loop
                if len(done) >= MAX_BATCH:
                    break
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
            if done:
                self._deliver(done)
            if stopping:
                return

    def _deliver(self, done: list[tuple[Callable[..., None], asyncio.Future[Any], Any]]) -> None:
        try:
            self._loop.call_soon_threadsafe(_settle_all, done)
        except RuntimeError:
            pass  # the loop is closed: the agent is exiting and nobody waits


class _Handoff:
    """A job's result handed straight to the loop's thread while it blocks for it (``call(wait_s=)``)."""

    __slots__ = ("_ready", "_mutex", "_waiting", "_settle")

    def __init__(self) -> None:
        self._ready = threading.Lock()
        self._ready.acquire()
        self._mutex = threading.Lock()
        self._waiting = True
        self._settle: tuple[Callable[..., None], Any] | None = None

    def wait(self, timeout: float, future: asyncio.Future[Any], beside: bool = False) -> None:
        """On the loop: block up to ``timeout``; settle ``future`` if the job ended by then.

        ``beside``: the thread shares the loop's CPU (nex.agent.cpus). The loop then gives the
        CPU to it (``sched_yield``, the GIL released) until the result is there, instead of
        sleeping on a lock the thread must wake it from: on one CPU, the thread runs as soon as
        the loop yields, and the loop runs again once the thread waits for its next job,
        without a wake-up either way (measured: p50 1.17× and 1.17× the echo against 1.31× and
        1.29×, the agent's CPU a call 190 µs against 212 µs, docs/performance.md)."""
        if beside:
            deadline = time.perf_counter() + timeout
            while self._settle is None and self._waiting and time.perf_counter() < deadline:
                os.sched_yield()
        else:
            self._ready.acquire(timeout=timeout)
        with self._mutex:
            self._waiting = False
            settle = self._settle
        if settle is not None:
            settle[0](future, settle[1])

    def hand(self, setter: Callable[..., None], value: Any) -> bool:
        """On the thread: give the result to the waiting loop; False if it no longer waits."""
        with self._mutex:
            if not self._waiting:
                return False
            self._waiting = False
            self._settle = (setter, value)
        self._ready.release()
        return True

    def release(self) -> None:
        """On the thread: the loop stops waiting; the result will come the usual way."""
        with self._mutex:
            if not self._waiting:
                return
            self._waiting = False
        self._ready.release()


# A job: its future, the function and its arguments, the handoff when the loop waits for it,
# and whether it is a function's call (ContextThread.call).
_Job = tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...], "_Handoff | None", bool]
_running = threading.local()  # the handoff of the job this thread runs, if the loop waits for it


def release_loop() -> None:
    """Before a job blocks on the loop (a host call): stop the loop from waiting for the job.

    Otherwise the loop would sit out its ``wait_s`` before serving the host call."""
    handoff = getattr(_running, "handoff", None)
    if handoff is not None:
        handoff.release()


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
