"""Feeds: logs and events are published, kept in bounded streams, and carry CloudEvents."""

from __future__ import annotations

import json

from nats.js.api import DeliverPolicy

from nex.api import subjects
from nex.api.events import CloudEvent
from nex.node.node import Node

from helpers import ARTIFACT_ROOTS, control, eventually, file_artifact


async def test_streams_are_bounded(node: Node, nc):
    js = nc.jetstream()
    logs = await js.stream_info(subjects.LOGS_STREAM)
    events = await js.stream_info(subjects.EVENTS_STREAM)
    assert logs.config.max_bytes == node.config.logs_stream_bytes > 0
    assert events.config.max_bytes == node.config.events_stream_bytes > 0


async def test_log_history_is_kept(node: Node, nc, programs):
    code, workload = await control(nc, "DEPLOY", node.node_id, {
        "name": "job", "type": "native", "lifecycle": "job", "argv": ["0", "x"],
        "artifact": file_artifact(programs["job"])})
    assert code is None
    js = nc.jetstream()
    subject = subjects.logs("default", workload["id"], "stdout")

    async def history():
        sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        lines = []
        try:
            while True:
                lines.append((await sub.next_msg(timeout=0.2)).data)
        except TimeoutError:
            pass
        finally:
            await sub.unsubscribe()
        return lines if lines == [b"job arg 0", b"job arg x"] else None
    assert await eventually(history)


async def test_events_are_cloudevents_and_heartbeats_flow(nats_server, nc, tmp_path):
    from nex.node.config import NodeConfig

    received = []

    async def on_event(msg):
        received.append(msg)
    await nc.subscribe(subjects.events_filter("system"), cb=on_event)
    node = Node(NodeConfig(artifact_roots=ARTIFACT_ROOTS,
                           server=nats_server.url, state_dir=tmp_path / "n", heartbeat_s=0.1))
    import asyncio
    runner = asyncio.create_task(node.run())
    await eventually(lambda: sum(m.subject.endswith(".heartbeat") for m in received) >= 2)
    node.request_stop()
    await asyncio.wait_for(runner, 10)
    await eventually(lambda: received[-1].subject.endswith(".node_stopped"))
    first = CloudEvent.model_validate(json.loads(received[0].data))
    assert received[0].subject == subjects.events("system", "node_started")
    assert first.specversion == "1.0" and first.type == "io.nats.nex.v1.node_started"
    assert first.source == f"nex/node/{node.node_id}" and first.data["node_id"] == node.node_id
