"""Schedules (docs/functions.md, "Triggers"): a cron trigger fires once across the fleet.

Three real nodes on one nats-server each run a copy of tests/functions/tick.js with a
per-second schedule (6 fields, seconds last); every copy publishes every fire time,
JetStream keeps one, and the function announces each run on nex.default.ticks.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from nats.aio.client import Client

from helpers import collect, control, eventually, file_artifact, running_node
from nex.agent.schedule import Schedule, fire_id
from nex.api import subjects
from nex.connection import flush_subscriptions
from nex.natsserver import NatsServer

TICK = Path(__file__).parent / "functions" / "tick.js"


def test_fire_ids_are_the_same_on_every_copy():
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert fire_id("shop", "report", at) == "sched:shop:report:2026-01-02T03:04:05+00:00"


async def test_every_fire_time_runs_once_across_three_nodes(nats_server: NatsServer, nc: Client, tmp_path: Path):
    ticks = await collect(nc, "nex.default.ticks")
    await flush_subscriptions(nc)
    body = {"name": "tick", "type": "javascript", "artifact": file_artifact(TICK),
            "triggers": [{"subject": "ticks.every-second", "schedule": "* * * * * *"}]}
    async with running_node(nats_server, tmp_path / "n1", "n1", reconciler=False) as n1, \
            running_node(nats_server, tmp_path / "n2", "n2", reconciler=False) as n2, \
            running_node(nats_server, tmp_path / "n3", "n3", reconciler=False) as n3:
        for node in (n1, n2, n3):
            code, summary = await control(nc, "DEPLOY", node.node_id, body=body, timeout=15)
            assert code is None, summary
        await eventually(lambda: len(set(m.data for m in ticks)) >= 4, timeout=20)
    fired = Counter(m.data.decode() for m in ticks)
    assert len(fired) >= 4
    assert set(fired.values()) == {1}, fired  # each fire time ran once, not once per node
    times = sorted(datetime.fromisoformat(t) for t in fired)
    assert all(t.microsecond == 0 for t in times)
    # Every fire time was kept once in the stream, however many copies published it (three
    # would be kept per fire time without the dedupe; one or two more may have fired while
    # the nodes stopped, not run any more).
    info = await nc.jetstream().stream_info(subjects.function_stream("default", "tick"))
    assert len(fired) <= info.state.last_seq <= len(fired) + 2, (info.state, fired)


async def test_a_schedule_follows_an_injected_clock(nc: Client):
    """The clock is injectable: a schedule whose clock jumps a minute fires that minute's time."""
    js = nc.jetstream()
    await js.add_stream(name="SCHED_PROBE", subjects=["probe.schedule"], duplicate_window=60)
    now = [datetime(2026, 1, 1, 12, 0, 30, tzinfo=timezone.utc).timestamp()]
    schedule = Schedule(js, "default", "probe", "probe.schedule", "* * * * *", clock=lambda: now[0]).start()
    try:
        await asyncio.sleep(0.05)
        now[0] += 30  # 12:01:00: the next fire time
        sub = await js.subscribe("probe.schedule", stream="SCHED_PROBE")
        msg = await sub.next_msg(timeout=5)
    finally:
        await schedule.stop()
    assert json.loads(msg.data) == {"schedule": "* * * * *", "time": "2026-01-01T12:01:00+00:00"}
    assert msg.headers[subjects.MSG_ID_HEADER] == "sched:default:probe:2026-01-01T12:01:00+00:00"
