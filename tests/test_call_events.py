"""What a call leaves behind (issue 19): nothing stored per successful call, aggregated
function_stats, failures one by one but rate-limited with a count of what was dropped.

Against a real node on a real nats-server (JetStream on), with JavaScript functions.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from helpers import collect, deploy, eventually, function_body, request, running_node
from nex.api import subjects
from nex.api.events import CloudEvent, FunctionStatsData
from nex.client import NexClient
from nex.agent.activity import CallWindow
from nex.ratelimit import TokenBucket

CALLS = 1000
KEPT_STREAMS = (subjects.LOGS_STREAM, subjects.EVENTS_STREAM, subjects.AUDIT_STREAM)


async def kept(nc) -> dict[str, int]:
    """Messages each stream of the node keeps (its stream info): what JetStream wrote."""
    js = nc.jetstream()
    return {name: (await js.stream_info(name)).state.messages for name in KEPT_STREAMS}


async def started_kept(nc) -> bool:
    """The deploy's workload_started is in the audit stream: the count that follows is of calls only."""
    info = await nc.jetstream().stream_info(subjects.AUDIT_STREAM,
                                            subjects_filter=subjects.events("default", "workload_started"))
    return bool(info.state.messages)


def stats_of(messages: list, workload_id: str) -> list[FunctionStatsData]:
    found = [FunctionStatsData.model_validate(json.loads(m.data)["data"]) for m in messages]
    return [s for s in found if s.workload_id == workload_id]


@pytest.fixture
async def quiet_node(nats_server, tmp_path):
    """A node whose heartbeats (an event each) stay out of a count of a few seconds."""
    async with running_node(nats_server, tmp_path / "node", "calls", heartbeat_s=3600,
                            function_stats_interval_s=0.3, live_call_events=True) as node:
        yield node


async def test_a_thousand_successful_calls_write_nothing_but_their_function_stats(quiet_node, nc, tmp_path):
    script = tmp_path / "hello.js"
    script.write_text("(subject, payload) => 'hello'\n")
    workload = await deploy(nc, quiet_node, function_body(script, "hello", "calls.hello"))
    stats = await collect(nc, subjects.events("default", "function_stats"))
    invoked = await collect(nc, subjects.events("default", "function_invoked"))
    await eventually(lambda: started_kept(nc))
    before = await kept(nc)

    for _ in range(CALLS // 100):
        replies = await asyncio.gather(*(request(nc, "calls.hello", b"x") for _ in range(100)))
        assert {r.data for r in replies} == {b"hello"}
    await eventually(lambda: sum(s.calls for s in stats_of(stats, workload["id"])) == CALLS, timeout=10)
    after = await kept(nc)

    written = {name: after[name] - before[name] for name in KEPT_STREAMS}
    # One stored message per stats interval of the function, not one per call; nothing in the audit trail.
    assert written == {subjects.LOGS_STREAM: 0, subjects.EVENTS_STREAM: len(stats), subjects.AUDIT_STREAM: 0}
    assert 1 <= len(stats) <= 20, len(stats)
    # The live feed still carries every call, for `nex events -f` and tracing: no stream keeps it.
    await eventually(lambda: len(invoked) == CALLS, timeout=10)
    last = stats_of(stats, workload["id"])[-1]
    assert last.calls_total == CALLS and last.errors_total == 0 and last.name == "hello"
    windows = stats_of(stats, workload["id"])
    assert all(w.p50_ms is not None and 0 <= w.p50_ms <= w.p99_ms <= w.max_ms for w in windows if w.calls)
    assert all(w.interval_s > 0 for w in windows)


async def test_failures_are_kept_one_by_one_up_to_a_rate_and_the_rest_are_counted(nats_server, nc, tmp_path):
    script = tmp_path / "broken.js"
    script.write_text("(subject, payload) => { throw new Error('broken on purpose') }\n")
    async with running_node(nats_server, tmp_path / "node", "failing", heartbeat_s=3600,
                            function_stats_interval_s=0.3, failure_events_per_s=1, failure_events_burst=5) as node:
        workload = await deploy(nc, node, function_body(script, "broken", "calls.broken"))
        failed = await collect(nc, subjects.events("default", "function_failed"))
        stats = await collect(nc, subjects.events("default", "function_stats"))
        await eventually(lambda: started_kept(nc))
        before = await kept(nc)
        invoked = await collect(nc, subjects.events("default", "function_invoked"))
        replies = await asyncio.gather(*(request(nc, "calls.broken", b"x") for _ in range(200)))
        assert all(r.headers and r.headers.get("Nats-Service-Error-Code") == "500" for r in replies)
        await eventually(lambda: sum(s.calls for s in stats_of(stats, workload["id"])) == 200, timeout=10)
        after = await kept(nc)

    windows = stats_of(stats, workload["id"])
    assert invoked == []  # live call events are off by default; failures are never "invoked"
    dropped = sum(w.failures_dropped for w in windows)
    assert sum(w.errors for w in windows) == 200
    # The burst, and about one a second after it; every failure is either an event or counted.
    assert 5 <= len(failed) <= 12, len(failed)
    assert len(failed) + dropped == 200
    assert after[subjects.EVENTS_STREAM] - before[subjects.EVENTS_STREAM] == len(failed) + len(windows)
    first = CloudEvent.model_validate_json(failed[0].data)
    assert "broken on purpose" in first.data["error"] and first.data["kind"] == "error"
    later = [CloudEvent.model_validate_json(m.data).data for m in failed[5:]]
    # A failure let through after some were dropped says how many.
    assert all(d.get("dropped_before", 0) > 0 for d in later), later


# -- pure parts ---------------------------------------------------------------------------


def test_a_call_window_counts_kinds_and_reads_percentiles():
    window = CallWindow(sample_cap=1000)
    assert window.take() is None  # an idle function sends nothing
    for ms in range(1, 101):
        window.record(float(ms))
    window.record(500.0, "timeout")
    window.record(3.0, "out_of_memory")
    window.refuse()
    figures = window.take()
    assert figures["calls"] == 102 and figures["errors"] == 2 and figures["rejected"] == 1
    assert (figures["timeouts"], figures["out_of_memory"]) == (1, 1)
    assert figures["p50_ms"] == 51.0 and figures["p99_ms"] == 100.0 and figures["max_ms"] == 500.0
    assert window.take() is None  # a new window


def test_past_its_cap_a_window_keeps_a_uniform_sample():
    window = CallWindow(sample_cap=500)
    for i in range(100_000):
        window.record(float(i % 1000))
    figures = window.take()
    assert figures["calls"] == 100_000 and figures["max_ms"] == 999.0
    assert 400 <= figures["p50_ms"] <= 600 and figures["p99_ms"] >= 950


def test_the_failure_limit_lets_a_burst_through_then_a_rate_and_counts_the_rest():
    now = [0.0]
    limit = TokenBucket(per_s=2, burst=3, clock=lambda: now[0])
    assert [limit.allow() for _ in range(5)] == [True, True, True, False, False]
    assert limit.dropped == 2
    now[0] = 0.5  # one token back
    assert limit.allow() and limit.take_dropped() == 2 and not limit.allow()
    with pytest.raises(ValueError):
        TokenBucket(per_s=-1, burst=1)


def test_a_call_that_did_not_run_counts_but_not_in_the_percentiles():
    window = CallWindow()
    window.record(2.0)
    window.record(None, "loop")
    figures = window.take()
    assert (figures["calls"], figures["errors"]) == (2, 1)
    assert figures["p50_ms"] == figures["max_ms"] == 2.0


async def test_following_events_gives_the_kept_ones_then_live_calls_once_each(quiet_node, nc, tmp_path):
    script = tmp_path / "hello.js"
    script.write_text("(subject, payload) => 'hello'\n")
    workload = await deploy(nc, quiet_node, function_body(script, "followed", "calls.followed"))
    await eventually(lambda: started_kept(nc))
    async with NexClient(nc, "default") as client:
        events = client.events(follow=True)
        first = await asyncio.wait_for(anext(events), 10)  # from NEX_AUDIT
        assert (first.event_type, first.subject) == ("workload_started", workload["id"])
        await request(nc, "calls.followed", b"x")
        seen = []
        while not {"function_invoked", "function_stats"} <= {e.event_type for e in seen}:
            seen.append(await asyncio.wait_for(anext(events), 10))
        await events.aclose()
    assert [e.event_type for e in seen].count("function_invoked") == 1  # live, kept by no stream
    assert all(e.subject == workload["id"] for e in seen)
