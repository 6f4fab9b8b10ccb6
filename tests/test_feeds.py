"""Feeds: logs and events are published, kept in bounded streams, and carry CloudEvents."""

from __future__ import annotations

import json

import pytest

from nats.js.api import DeliverPolicy, StreamConfig

from nex.api import subjects
from nex.api.events import ACTIVITY_EVENTS, AUDIT_EVENTS, LIVE_EVENTS, CloudEvent, EventType, kept_subjects, make_event
from nex.client import NexClient
from nex.node.feeds import StreamConflict
from nex.node.node import Node

from helpers import ARTIFACT_ROOTS, control, eventually, file_artifact, running_node


async def test_streams_are_bounded(node: Node, nc):
    js = nc.jetstream()
    logs = await js.stream_info(subjects.LOGS_STREAM)
    events = await js.stream_info(subjects.EVENTS_STREAM)
    audit = await js.stream_info(subjects.AUDIT_STREAM)
    assert logs.config.max_bytes == node.config.logs_stream_bytes > 0
    assert events.config.max_bytes == node.config.events_stream_bytes > 0
    assert audit.config.max_bytes == node.config.audit_stream_bytes > 0
    assert audit.config.max_age == node.config.audit_max_age_s > 0


async def test_each_event_type_is_kept_by_one_stream_and_function_invoked_by_none(node: Node, nc):
    js = nc.jetstream()
    audit = set((await js.stream_info(subjects.AUDIT_STREAM)).config.subjects)
    events = set((await js.stream_info(subjects.EVENTS_STREAM)).config.subjects)
    assert audit == set(kept_subjects(AUDIT_EVENTS)) and events == set(kept_subjects(ACTIVITY_EVENTS))
    assert AUDIT_EVENTS | ACTIVITY_EVENTS | LIVE_EVENTS == set(EventType)
    assert not (AUDIT_EVENTS & ACTIVITY_EVENTS) and not (LIVE_EVENTS & (AUDIT_EVENTS | ACTIVITY_EVENTS))
    assert subjects.events("default", "request_rejected") in {s.replace("*", "default") for s in audit}


async def test_audit_retention_is_the_operators_and_an_earlier_events_stream_is_narrowed(nats_server, nc, tmp_path):
    js = nc.jetstream()
    # NEX_EVENTS as releases before the audit stream made it: every event type, with history.
    await js.add_stream(StreamConfig(name=subjects.EVENTS_STREAM, subjects=[subjects.events_filter("*")],
                                     max_bytes=1 << 20))
    old = make_event(EventType.REQUEST_REJECTED, "OLDNODE", {"why": {"code": 403}}).model_copy(update={"id": "old"})
    await js.publish(subjects.events("default", "request_rejected"), old.model_dump_json().encode())
    async with running_node(nats_server, tmp_path / "node", "upgraded", audit_stream_bytes=8 << 20,
                            audit_max_age_s=3600) as node:
        events = await js.stream_info(subjects.EVENTS_STREAM)
        audit = await js.stream_info(subjects.AUDIT_STREAM)
        assert set(events.config.subjects) == set(kept_subjects(ACTIVITY_EVENTS))
        assert events.config.max_bytes == 1 << 20 and events.state.messages >= 1  # the rest left as it was
        assert (audit.config.max_bytes, audit.config.max_age) == (8 << 20, 3600)
        # The old record is still read back, with the new ones kept in the audit stream.
        async with NexClient(nc, "default") as client:
            await eventually(lambda: client.live_node_count())
            rejected = [e.id async for e in client.events(types=["request_rejected"])]
            assert rejected == ["old"]
        async with NexClient(nc, "system") as client:  # node events' namespace
            started = [e async for e in client.events(types=["node_started"])]
        assert node.node_id in {e.data.get("node_id") for e in started}


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


async def test_a_stream_of_the_operators_that_takes_the_audit_subjects_is_a_clear_error(nats_server, nc, tmp_path):
    await nc.jetstream().add_stream(StreamConfig(name="OPS_REJECTIONS",
                                                 subjects=[subjects.events("*", "request_rejected")]))
    with pytest.raises(StreamConflict) as raised:
        async with running_node(nats_server, tmp_path / "node", "conflicted"):
            pass
    assert raised.value.name == subjects.AUDIT_STREAM
    assert "nats stream edit" in str(raised.value) and "NEX_AUDIT" in str(raised.value)
    assert (await nc.jetstream().stream_info("OPS_REJECTIONS")).config.subjects == [
        subjects.events("*", "request_rejected")]  # the operator's, left as it is
