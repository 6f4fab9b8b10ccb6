"""What a hand-over between two Python threads costs, on one CPU and across two (nex.agent.cpus).

    .venv/bin/python bench/thread_handover.py [--rounds 20000] [--runs 3]

Two threads pass a token back and forth through two locks, as the agent's loop and a
function's thread do for a call (a wake-up each way). Measured three ways, interleaved
in each run: both threads pinned to one CPU, pinned to two different CPUs, and left
to the kernel. Prints the median round trip of each run and the median of the runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time


def round_trips(rounds: int, loop_cpus: set[int] | None, thread_cpus: set[int] | None) -> float:
    """Median µs of a round trip: this thread wakes the other, which wakes it back."""
    there, back = threading.Lock(), threading.Lock()
    there.acquire()
    back.acquire()

    def other() -> None:
        if thread_cpus is not None:
            os.sched_setaffinity(0, thread_cpus)
        for _ in range(rounds):
            there.acquire()
            back.release()

    allowed = os.sched_getaffinity(0)
    if loop_cpus is not None:
        os.sched_setaffinity(0, loop_cpus)
    worker = threading.Thread(target=other)
    worker.start()
    samples = []
    try:
        for _ in range(rounds):
            started = time.perf_counter_ns()
            there.release()
            back.acquire()
            samples.append(time.perf_counter_ns() - started)
    finally:
        worker.join()
        os.sched_setaffinity(0, allowed)
    return statistics.median(samples) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        raise SystemExit("needs two CPUs")
    first, second = allowed[0], allowed[1]
    ways = {"one CPU": ({first}, {first}), "two CPUs": ({first}, {second}), "kernel's choice": (None, None)}
    results: dict[str, list[float]] = {name: [] for name in ways}
    for run in range(1, args.runs + 1):
        for name, (loop_cpus, thread_cpus) in ways.items():
            results[name].append(round_trips(args.rounds, loop_cpus, thread_cpus))
        print(f"run {run}: " + ", ".join(f"{name} {results[name][-1]:.1f} µs" for name in ways))
    print("median round trip: " + ", ".join(f"{name} {statistics.median(v):.1f} µs" for name, v in results.items()))


if __name__ == "__main__":
    main()
