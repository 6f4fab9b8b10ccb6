"""Where the agent's threads run: the loop and the threads of quick calls share one CPU.

A call goes from the event loop to its function's thread and back: two wake-ups of a
sleeping thread. When the two threads sit on different CPUs, each wake-up is an
interrupt to the other CPU, and on a virtual machine an exit to the hypervisor:
measured on the project's 2-vCPU test machine, a round trip between two Python
threads took 66–76 µs across CPUs and 5.3 µs on one (``bench/thread_handover.py``);
left to itself, the kernel puts them on different CPUs. The GIL lets only one of the
two run Python at a time anyway. So while the loop waits for its calls one at a time
(nex.agent.function.quick_wait_s: they are quick and do not overlap), it pins itself
to the CPU it is on (:func:`loop_waits`) and a function's thread joins it there
(:class:`Follower`): the hand-over is then two context switches on one CPU.

Once calls overlap (the loop pipelines them instead of waiting), the loop lets go of
its CPU, for the kernel to balance it against the other processes again, and a
function's thread leaves after a call the loop did not wait for or a call of
``SLOW_JOB_S`` or more (JavaScript and wasm run with the GIL released, so a long call
runs better beside the loop than taking turns with it). Each comes back only after
``QUICK_STREAK`` waited-for quick calls in a row. Pools of parallel calls and the
agent's other threads run anywhere (:func:`spread_this_thread`).

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
import time
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
    cpu: int | None = None  # the loop's CPU while it is pinned
    generation: int = 0  # bumped when the loop is pinned, moved or let go
    streak: int = 0  # calls in a row the loop waited for


_shared: _Shared | None = None  # set by colocate(): affinity is a property of the process's threads


def colocate() -> bool:
    """On the loop's thread, at start: the loop may now be pinned (:func:`loop_waits`). False
    when there is nothing to gain: one allowed CPU."""
    global _shared
    allowed = frozenset(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return False
    _shared = _Shared(allowed)
    return True


def loop_waits(waited: bool) -> None:
    """On the loop's thread, for each call: whether the loop blocks for it.

    After ``QUICK_STREAK`` waited-for calls in a row the loop is pinned to the CPU it is
    on (the kernel's latest choice); the first call it does not wait for (calls overlap, or
    a function runs long) lets it go, so that under load the kernel balances it again."""
    shared = _shared
    if shared is None:
        return
    if waited:
        if shared.cpu is None:
            shared.streak += 1
            if shared.streak >= QUICK_STREAK:
                cpu = current_cpu()
                _move_loop(shared, cpu if cpu in shared.allowed else min(shared.allowed))
        return
    shared.streak = 0
    if shared.cpu is not None and _set(shared.allowed):
        shared.cpu = None
        shared.generation += 1


def spread() -> None:
    """On the loop's thread, at exit: it may run anywhere again, and nothing follows it."""
    global _shared
    shared, _shared = _shared, None
    if shared is not None and shared.cpu is not None:
        _set(shared.allowed)


def spread_this_thread() -> None:
    """At the start of a thread that must not inherit the loop's pin (it may run anywhere)."""
    if _shared is not None:
        _set(_shared.allowed)


def active() -> bool:
    """Colocation is on in this process (:func:`colocate`)."""
    return _shared is not None


def loop_cpu() -> int | None:
    """The CPU the loop is pinned to, or None."""
    return _shared.cpu if _shared is not None else None


def _move_loop(shared: _Shared, cpu: int) -> bool:
    if not _set({cpu}):
        return False
    shared.cpu = cpu
    shared.generation += 1
    return True


class Follower:
    """The placement of one function's thread: with the loop while its jobs are quick.

    Starts anywhere (a build may compile for seconds, and native threads it starts inherit
    the mask). :meth:`after` is called on the thread after each job, with its duration."""

    def __init__(self) -> None:
        self._streak = 0
        self._pinned_to: tuple[int, int] | None = None  # (cpu, generation) while pinned
        spread_this_thread()

    def after(self, seconds: float, waited: bool) -> None:
        """After a job of ``seconds``; ``waited``: the loop blocked for it (nex.agent.worker).

        Only the calls the loop waits for gain from sharing its CPU: a job it did not wait
        for (calls pipelined under load, a build, a stats read) leaves the thread free to
        run beside the loop on another CPU."""
        shared = _shared
        if shared is None:
            return
        if seconds >= SLOW_JOB_S or not waited or shared.cpu is None:
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
    def beside_loop(self) -> bool:
        """Pinned to the loop's CPU as it is now (not to one the loop has since left)."""
        shared = _shared
        return shared is not None and self._pinned_to == (shared.cpu, shared.generation)


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

    async def run(self) -> None:
        """On the loop, until cancelled or until colocation ends (:func:`spread`). Without a
        readable /proc/stat (a sandbox that hides it) the loop stays where it is pinned."""
        loop = asyncio.get_running_loop()
        try:
            before, own_before, at = read_cpu_times(), time.thread_time(), loop.time()
        except (OSError, ValueError) as exc:
            log.warning("not rebalancing the agent's loop: /proc/stat: %s", exc)
            return
        while _shared is not None:
            await asyncio.sleep(self._interval_s)
            try:
                now = read_cpu_times()
            except (OSError, ValueError) as exc:
                log.warning("not rebalancing the agent's loop any more: /proc/stat: %s", exc)
                return
            own_now, now_at = time.thread_time(), loop.time()
            self.rebalance(before, now, (own_now - own_before) / max(now_at - at, 1e-3))
            before, own_before, at = now, own_now, now_at

    def rebalance(self, before: dict[int, CpuTimes], now: dict[int, CpuTimes], own: float) -> None:
        """On the loop's thread: move it if :func:`choose_cpu` says so; ``own``: the loop's share of a CPU."""
        shared = _shared
        if shared is None or shared.cpu is None:
            return
        busy = {cpu: (now[cpu].busy - before[cpu].busy) / max(now[cpu].total - before[cpu].total, 1)
                for cpu in shared.allowed if cpu in now and cpu in before}
        target = choose_cpu(busy, own, shared.cpu)
        if target == shared.cpu:
            return
        was = shared.cpu
        if _move_loop(shared, target):
            log.info("agent loop moved from CPU %d (%.0f %% busy) to CPU %d (%.0f %%)", was, 100 * busy[was], target,
                     100 * busy[target])


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
