"""How a call goes from the agent's loop to its function's thread and back (issue 19).

The loop may block for a quick call and take its result straight from the thread
(nex.agent.worker), and the loop and the threads of quick calls share one CPU
(nex.agent.cpus). The units run real threads; the end-to-end tests run a real node,
whose agent's threads are read from /proc.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from pathlib import Path

import pytest

from helpers import agent_pids, deploy, function_body, request, running_node
from nex.agent import cpus
from nex.agent.worker import ContextThread, release_loop

TWO_CPUS = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to place threads on")


async def test_a_quick_job_is_done_when_call_returns_and_a_slow_one_completes_on_the_loop():
    thread = ContextThread("handover")
    try:
        quick = thread.call(lambda x: x * 2, 21, wait_s=5.0)
        assert quick.done() and quick.result() == 42  # no turn of the loop was needed

        slow = thread.call(lambda: (time.sleep(0.2), "late")[1], wait_s=0.001)
        assert not slow.done(), "the loop stopped waiting after wait_s"
        assert await asyncio.wait_for(slow, 5) == "late"

        def fail() -> None:
            raise ValueError("bad input")

        failed = thread.call(fail, wait_s=5.0)
        assert failed.done()
        with pytest.raises(ValueError, match="bad input"):
            failed.result()
    finally:
        thread.stop()


async def test_a_job_that_needs_the_loop_while_it_waits_lets_it_go_at_once():
    """A host call runs on the loop: the loop, blocked for the job, must not sit out its wait."""
    loop = asyncio.get_running_loop()
    thread = ContextThread("host call")

    async def on_the_loop() -> str:
        return "from the loop"

    def host_call() -> str:
        release_loop()
        return asyncio.run_coroutine_threadsafe(on_the_loop(), loop).result(30)

    try:
        started = time.monotonic()
        pending = thread.call(host_call, wait_s=30.0)
        assert not pending.done()
        assert time.monotonic() - started < 10, "the loop sat out its wait while the job needed it"
        assert await asyncio.wait_for(pending, 10) == "from the loop"
    finally:
        thread.stop()


async def test_every_result_arrives_once_whichever_side_wins_the_race():
    """Wait limits about as long as the jobs: each job's result comes either straight or on the loop."""
    thread = ContextThread("race")
    rng = random.Random(19)
    try:
        futures = []
        for i in range(300):
            delay = rng.choice([0, 0, 0.00005, 0.0002])
            futures.append(thread.call(lambda i=i, d=delay: (time.sleep(d), i)[1], wait_s=rng.choice([0.00001, 0.0001,
                                                                                                     0.001])))
        assert await asyncio.wait_for(asyncio.gather(*futures), 30) == list(range(300))
    finally:
        thread.stop()


def test_the_loop_stays_unless_others_crowd_its_cpu():
    # The agent itself keeps its CPU busy: that is no reason to move.
    assert cpus.choose_cpu({0: 0.9, 1: 0.1}, own=0.85, current=0) == 0
    # Another process keeps it busy while CPU 1 is idle: move.
    assert cpus.choose_cpu({0: 1.0, 1: 0.1}, own=0.2, current=0) == 1
    # Both are as busy: moving gains nothing.
    assert cpus.choose_cpu({0: 1.0, 1: 0.9}, own=0.2, current=0) == 0
    # The idlest of several.
    assert cpus.choose_cpu({0: 0.95, 1: 0.6, 2: 0.05, 3: 0.5}, own=0.0, current=0) == 2
    # A CPU it has no figure for is not a place to go.
    assert cpus.choose_cpu({1: 0.0}, own=0.0, current=0) == 0


def test_cpu_times_read_from_this_machine():
    times = cpus.read_cpu_times()
    assert set(os.sched_getaffinity(0)) <= set(times)
    assert all(0 <= t.busy <= t.total and t.total > 0 for t in times.values())
    assert cpus.current_cpu() in times


def _in_thread(fn):
    """Run ``fn`` on a thread of its own (pinning the test's own thread would outlive the test)."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as exc:  # raised again on the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the scenario did not end"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


@TWO_CPUS
def test_a_thread_joins_the_loop_after_quick_waited_jobs_and_leaves_after_a_slow_or_pipelined_one():
    allowed = set(os.sched_getaffinity(0))

    def scenario() -> list[set[int]]:
        assert cpus.colocate()
        assert os.sched_getaffinity(0) == allowed, "not pinned before it waits for calls"
        for _ in range(cpus.QUICK_STREAK):
            cpus.loop_waits(True)
        cpu = cpus.loop_cpu()
        assert cpu is not None and os.sched_getaffinity(0) == {cpu}
        try:
            seen = []

            def follower_thread() -> None:
                follower = cpus.Follower()
                seen.append(set(os.sched_getaffinity(0)))  # starts anywhere, not with the loop's pin
                for _ in range(cpus.QUICK_STREAK):
                    follower.after(0.00001, waited=True)
                seen.append(set(os.sched_getaffinity(0)))
                follower.after(cpus.SLOW_JOB_S * 5, waited=True)
                seen.append(set(os.sched_getaffinity(0)))
                for _ in range(cpus.QUICK_STREAK - 1):
                    follower.after(0.00001, waited=True)
                seen.append(set(os.sched_getaffinity(0)))  # not back yet: a streak is needed
                follower.after(0.00001, waited=True)
                seen.append(set(os.sched_getaffinity(0)))  # back
                follower.after(0.00001, waited=False)  # pipelined: the loop did not wait for it
                seen.append(set(os.sched_getaffinity(0)))

            worker = threading.Thread(target=follower_thread)
            worker.start()
            worker.join(30)
            return [{cpu}] + seen
        finally:
            cpus.spread()
            assert os.sched_getaffinity(0) == allowed

    loop_cpu, at_start, after_quick, after_slow, after_few, after_streak, after_pipelined = _in_thread(scenario)
    assert at_start == allowed
    assert after_quick == loop_cpu
    assert after_slow == allowed
    assert after_few == allowed
    assert after_streak == loop_cpu
    assert after_pipelined == allowed


@TWO_CPUS
def test_the_rebalancer_moves_the_loop_and_the_quick_threads_follow():
    allowed = set(os.sched_getaffinity(0))

    def scenario() -> tuple[int, int, set[int]]:
        assert cpus.colocate()
        for _ in range(cpus.QUICK_STREAK):
            cpus.loop_waits(True)
        cpu = cpus.loop_cpu()
        assert cpu is not None
        try:
            other = min(allowed - {cpu})
            # Over the interval: the loop's CPU full of others' work, the other CPU idle.
            before = {cpu: cpus.CpuTimes(0, 0), other: cpus.CpuTimes(0, 0)}
            after = {cpu: cpus.CpuTimes(100, 100), other: cpus.CpuTimes(5, 100)}
            rebalancer = cpus.Rebalancer()
            rebalancer.rebalance(before, after, own=0.1)
            moved_to = next(iter(os.sched_getaffinity(0)))
            follower = cpus.Follower()
            for _ in range(cpus.QUICK_STREAK):
                follower.after(0.00001, waited=True)
            return cpu, moved_to, set(os.sched_getaffinity(0))
        finally:
            cpus.spread()

    was, now, follower = _in_thread(scenario)
    assert now != was
    assert follower == {now}


def _thread_cpus(pid: int) -> dict[int, set[int]]:
    """Each thread of ``pid`` and the CPUs it may run on."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # ended meanwhile
        listed = next(line for line in status.splitlines() if line.startswith("Cpus_allowed_list:"))
        found[int(task.name)] = _cpu_list(listed.split(":", 1)[1].strip())
    return found


def _cpu_list(text: str) -> set[int]:
    cpus_: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus_.update(range(int(low), int(high or low) + 1))
    return cpus_


@TWO_CPUS
async def test_a_node_agent_runs_its_loop_and_a_quick_function_on_one_cpu(nats_server, nc, tmp_path):
    allowed = set(os.sched_getaffinity(0))
    script = tmp_path / "hello.js"
    script.write_text("(subject, payload) => 'hello ' + subject\n")
    async with running_node(nats_server, tmp_path / "node", "colocated") as node:
        await deploy(nc, node, function_body(script, "hello", "colocated.hello"))
        for _ in range(5 * cpus.QUICK_STREAK):  # the agent waits, the loop pins, the thread joins: 8 calls each
            assert (await request(nc, "colocated.hello")).data == b"hello colocated.hello"
        [agent] = agent_pids("nex.agent.js")
        threads = _thread_cpus(agent)
        loop_cpus = threads.pop(agent)  # the main thread runs the loop
        assert len(loop_cpus) == 1, f"the loop may run on {loop_cpus}"
        pinned = [tid for tid, on in threads.items() if on == loop_cpus]
        assert len(pinned) == 1, "the function's thread, and only it, joined the loop"
        assert all(on == allowed for tid, on in threads.items() if tid not in pinned)


@TWO_CPUS
async def test_with_colocate_calls_off_no_thread_is_pinned(nats_server, nc, tmp_path):
    allowed = set(os.sched_getaffinity(0))
    script = tmp_path / "hello.js"
    script.write_text("(subject, payload) => 'hello'\n")
    async with running_node(nats_server, tmp_path / "node", "spread", colocate_calls=False) as node:
        await deploy(nc, node, function_body(script, "hello", "spread.hello"))
        for _ in range(5 * cpus.QUICK_STREAK):
            assert (await request(nc, "spread.hello")).data == b"hello"
        [agent] = agent_pids("nex.agent.js")
        assert set(map(frozenset, _thread_cpus(agent).values())) == {frozenset(allowed)}


def test_the_loop_waits_only_for_a_likely_quick_call_and_only_about_as_long_as_it_ran():
    from nex.agent.function import LONE_STREAK, MAX_QUICK_WAIT_S, MIN_QUICK_WAIT_S, QUICK_CALL_MS, quick_wait_s

    assert quick_wait_s(0.02, lone_calls=LONE_STREAK) == MIN_QUICK_WAIT_S
    assert quick_wait_s(0.3, lone_calls=LONE_STREAK) == pytest.approx(0.0012)
    assert quick_wait_s(QUICK_CALL_MS, lone_calls=100) == MAX_QUICK_WAIT_S
    # Last call slow: the loop does not block for this one.
    assert quick_wait_s(QUICK_CALL_MS + 0.1, lone_calls=100) == 0
    # Calls overlapped lately (clients with requests in flight): the loop keeps pipelining.
    assert quick_wait_s(0.02, lone_calls=LONE_STREAK - 1) == 0
    assert quick_wait_s(0.02, lone_calls=0) == 0


async def test_a_function_that_turns_slow_does_not_hold_another_functions_calls(nats_server, nc, tmp_path):
    """Attack: a tenant makes quick calls, so that the loop waits for its next one, which then runs
    for seconds. The loop stops waiting within MAX_QUICK_WAIT_S: another tenant's call, sent while
    the slow one runs, is answered long before it ends."""
    from nex.agent.function import MAX_QUICK_WAIT_S

    slow = tmp_path / "slow.js"
    slow.write_text("(subject, payload) => { if (payload.length === 4) {"
                    " const end = Date.now() + 3000; while (Date.now() < end) {} } return 'done' }\n")
    quick = tmp_path / "quick.js"
    quick.write_text("(subject, payload) => 'quick'\n")
    async with running_node(nats_server, tmp_path / "node", "neighbours") as node:
        await deploy(nc, node, function_body(slow, "noisy", "neighbours.noisy", limits={"timeout_ms": 10_000}))
        await deploy(nc, node, function_body(quick, "victim", "neighbours.victim"))
        for _ in range(5 * cpus.QUICK_STREAK):
            assert (await request(nc, "neighbours.noisy", b"quick!")).data == b"done"
        noisy = asyncio.create_task(request(nc, "neighbours.noisy", b"slow", timeout=30))
        await asyncio.sleep(10 * MAX_QUICK_WAIT_S)  # the slow call has reached the agent
        victim = await request(nc, "neighbours.victim", timeout=30)
        assert victim.data == b"quick"
        assert not noisy.done(), "the victim's call was answered only after the noisy one ended"
        assert (await noisy).data == b"done"


@TWO_CPUS
def test_beside_the_loop_a_quick_result_still_comes_straight_and_a_slow_or_host_call_lets_go():
    """Once the thread shares the loop's CPU, the loop yields the CPU to it rather than sleeping."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        thread = ContextThread("beside")
        try:
            for i in range(3 * cpus.QUICK_STREAK):
                cpus.loop_waits(True)  # as LoadedFunction does for each call it waits for
                quick = thread.call(lambda i=i: i, wait_s=5.0, a_call=True)
                assert quick.done() and quick.result() == i
            assert os.sched_getaffinity(thread._thread.native_id) == {cpus.loop_cpu()}
            # A job that is not a call (a stats read) leaves the thread where it is.
            assert await thread.call(lambda: "stats") == "stats"
            assert os.sched_getaffinity(thread._thread.native_id) == {cpus.loop_cpu()}

            slow = thread.call(lambda: (time.sleep(0.2), "late")[1], wait_s=0.001, a_call=True)
            assert not slow.done()
            assert await asyncio.wait_for(slow, 5) == "late"
            assert len(os.sched_getaffinity(thread._thread.native_id)) > 1, "a slow call lets the thread go"

            async def on_the_loop() -> str:
                return "from the loop"

            def host_call() -> str:
                release_loop()
                return asyncio.run_coroutine_threadsafe(on_the_loop(), loop).result(30)

            for _ in range(cpus.QUICK_STREAK):  # back beside the loop after the slow job
                await thread.call(lambda: None, wait_s=5.0, a_call=True)
            started = time.monotonic()
            pending = thread.call(host_call, wait_s=30.0)
            assert time.monotonic() - started < 10, "the loop sat out its wait while the job needed it"
            assert await asyncio.wait_for(pending, 10) == "from the loop"
        finally:
            thread.stop()

    def on_a_pinned_loop() -> bool:
        assert cpus.colocate()
        try:
            asyncio.run(scenario())
        finally:
            cpus.spread()
        return True

    assert _in_thread(on_a_pinned_loop)


@TWO_CPUS
def test_the_loop_lets_go_of_its_cpu_as_soon_as_calls_overlap():
    allowed = set(os.sched_getaffinity(0))

    def scenario() -> tuple[set[int], set[int], set[int], set[int]]:
        assert cpus.colocate()
        try:
            for _ in range(cpus.QUICK_STREAK - 1):
                cpus.loop_waits(True)
            before_streak = set(os.sched_getaffinity(0))
            cpus.loop_waits(True)
            pinned = set(os.sched_getaffinity(0))
            cpus.loop_waits(False)  # a call it did not wait for: calls overlap
            let_go = set(os.sched_getaffinity(0))
            cpus.loop_waits(True)
            return before_streak, pinned, let_go, set(os.sched_getaffinity(0))
        finally:
            cpus.spread()

    before_streak, pinned, let_go, one_more = _in_thread(scenario)
    assert before_streak == allowed
    assert len(pinned) == 1 and pinned <= allowed
    assert let_go == allowed
    assert one_more == allowed, "a new streak is needed"
