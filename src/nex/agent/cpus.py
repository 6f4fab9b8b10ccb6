"""Where the agent's threads run: the loop and the threads of quick calls share one CPU.

A call goes from the event loop to its function's thread and back: two wake-ups of a
sleeping thread. When the two threads sit on different CPUs, each wake-up is an
interrupt to the other CPU, and on a virtual machine an exit to the hypervisor:
measured on the project's 2-vCPU test machine, a round trip between two Python
threads took 66 µs across CPUs and 5.4 µs on one (``bench/thread_handover.py``).
The GIL lets only one of the two threads run Python at a time anyway, so the agent
pins its loop's thread to one CPU (:func:`colocate`) and a function's thread joins
it while its calls are quick (:class:`Follower`): the hand-over is then two context
switches on one CPU.

A function whose calls run long (JavaScript and wasm run with the GIL released) gains
from running beside the loop rather than taking turns with it: after a call of
``SLOW_JOB_S`` or more its thread may run on any CPU again, and it comes back only
after ``QUICK_STREAK`` quick calls in a row. Pools of parallel calls and the agent's
other threads run anywhere (:func:`spread_this_thread`).

A pinned loop cannot be moved by the kernel, so :class:`Rebalancer` does it: every
``REBALANCE_S`` it reads ``/proc/stat`` and moves the loop to the idlest allowed CPU
when other processes keep its own CPU busier than that one by ``REBALANCE_MARGIN``;
the quick threads follow at their next call. With one allowed CPU, or with
``colocate_calls`` off in the node's config, nothing is pinned.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SLOW_JOB_S = 0.001
QUICK_STREAK = 8
REBALANCE_S = 5.0
REBALANCE_MARGIN = 0.3


@dataclass
class _Shared:
    allowed: frozenset[int]
    cpu: int
    generation: int = 0  # bumped when the loop moves


_shared: _Shared | None = None  # set by colocate(): affinity is a property of the process's threads


def colocate() -> int | None:
    """On the loop's thread: pin it to the CPU it runs on; returns that CPU, or None when
    there is nothing to gain (one allowed CPU) or pinning is not allowed here."""
    global _shared
    allowed = frozenset(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None
    cpu = current_cpu()
    if cpu not in allowed:
        cpu = min(allowed)
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:
        log.warning("not pinning the agent's loop to CPU %d: %s", cpu, exc)
        return None
    _shared = _Shared(allowed, cpu)
    return cpu


def spread() -> None:
    """On the loop's thread, at exit or when turned off: it may run anywhere again."""
    global _shared
    shared, _shared = _shared, None
    if shared is not None:
        _set(shared.allowed)


def spread_this_thread() -> None:
    """At the start of a thread that must not inherit the loop's pin (it may run anywhere)."""
    if _shared is not None:
        _set(_shared.allowed)


def loop_cpu() -> int | None:
    """The CPU the loop is pinned to, or None."""
    return _shared.cpu if _shared is not None else None


class Follower:
    """The placement of one function's thread: with the loop while its jobs are quick.

    Starts anywhere (a build may compile for seconds, and native threads it starts inherit
    the mask). :meth:`after` is called on the thread after each job, with its duration."""

    def __init__(self) -> None:
        self._streak = 0
        self._pinned_to: tuple[int, int] | None = None  # (cpu, generation) while pinned
        spread_this_thread()

    def after(self, seconds: float, queued: bool = False) -> None:
        """After a job of ``seconds``; ``queued``: more jobs wait (the calls are pipelined)."""
        shared = _shared
        if shared is None:
            return
        if seconds >= SLOW_JOB_S or queued:
            self._streak = 0
            if self._pinned_to is not None:
                self._pinned_to = None
                _set(shared.allowed)
            return
        self._streak += 1
        where = (shared.cpu, shared.generation)
        if self._pinned_to == where or self._streak < QUICK_STREAK:
            return
        if _set({shared.cpu}):
            self._pinned_to = where

    @property
    def pinned(self) -> bool:
        return self._pinned_to is not None


@dataclass(frozen=True)
class CpuTimes:
    busy: int
    total: int


def read_cpu_times(stat: Path = Path("/proc/stat")) -> dict[int, CpuTimes]:
    """Per CPU, the jiffies spent busy and in all since boot."""
    times: dict[int, CpuTimes] = {}
    for line in stat.read_text().splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        fields = [int(v) for v in rest.split()]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
        times[int(name[3:])] = CpuTimes(total - idle, total)
    return times


def own_cpu_seconds() -> float:
    """CPU time of this process, all threads."""
    t = os.times()
    return t.user + t.system


def choose_cpu(busy: dict[int, float], own: float, current: int, margin: float = REBALANCE_MARGIN) -> int:
    """Where the loop should be, given each allowed CPU's busy share over the last interval and
    the share of one CPU this process used: it stays unless what else runs on its CPU leaves it
    busier than the idlest other CPU by ``margin``."""
    others = {cpu: share for cpu, share in busy.items() if cpu != current}
    if current not in busy or not others:
        return current
    idlest = min(others, key=lambda cpu: (others[cpu], cpu))
    crowded_by_others = busy[current] - min(own, busy[current])
    return idlest if crowded_by_others - others[idlest] > margin else current


class Rebalancer:
    """Moves the pinned loop off a CPU that other processes keep busy (see the module's docstring)."""

    def __init__(self, interval_s: float = REBALANCE_S) -> None:
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.moves = 0

    def start(self) -> Rebalancer:
        self._task = asyncio.create_task(self._run(), name="cpu rebalancer")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        before, own_before, at = read_cpu_times(), own_cpu_seconds(), loop.time()
        while _shared is not None:
            await asyncio.sleep(self._interval_s)
            now, own_now, now_at = read_cpu_times(), own_cpu_seconds(), loop.time()
            self.rebalance(before, now, (own_now - own_before) / max(now_at - at, 1e-3))
            before, own_before, at = now, own_now, now_at

    def rebalance(self, before: dict[int, CpuTimes], now: dict[int, CpuTimes], own: float) -> None:
        """On the loop's thread: move it if :func:`choose_cpu` says so."""
        shared = _shared
        if shared is None:
            return
        busy = {cpu: (now[cpu].busy - before[cpu].busy) / max(now[cpu].total - before[cpu].total, 1)
                for cpu in shared.allowed if cpu in now and cpu in before}
        target = choose_cpu(busy, own, shared.cpu)
        if target == shared.cpu:
            return
        if not _set({target}):
            return
        log.info("agent loop moved from CPU %d (%.0f %% busy) to CPU %d (%.0f %%)", shared.cpu,
                 100 * busy[shared.cpu], target, 100 * busy[target])
        shared.cpu = target
        shared.generation += 1
        self.moves += 1


def current_cpu() -> int:
    """The CPU this thread last ran on (field 39 of /proc/thread-self/stat)."""
    stat = Path("/proc/thread-self/stat").read_text()
    return int(stat.rpartition(")")[2].split()[36])


def _set(cpus: set[int] | frozenset[int]) -> bool:
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:  # a cpuset changed under the agent: keep going where it is
        log.warning("cannot set the CPUs of thread %s to %s: %s", threading.current_thread().name, sorted(cpus), exc)
        return False
    return True
