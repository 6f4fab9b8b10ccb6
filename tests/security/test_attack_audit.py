"""An attack on the audit trail (issue 19): calls in a loop to push the record of an attack out.

The attacker is a plain nats-py client without a key. It makes a rejected request (the
record of its attempt), then calls a function that fails, in a loop, to fill the events
stream several times over. Before issue 19 every call stored an event in the one stream
that also held the rejections, so enough calls erased them. The rejection must still be
there, read back as an operator reads it.
"""

from __future__ import annotations

import asyncio
import json

from helpers import collect, control, deploy, eventually, function_body, request, running_node
from nex.api import subjects
from nex.client import NexClient

SMALL_EVENTS_BYTES = 16 * 1024


async def test_calls_in_a_loop_cannot_flush_a_rejection_from_the_audit_trail(nats_server, nc, tmp_path):
    script = tmp_path / "broken.js"
    script.write_text("(subject, payload) => { throw new Error('no') }\n")
    # The worst case for the node: a small events stream, and every failure kept (no rate limit).
    async with running_node(nats_server, tmp_path / "node", "audited", heartbeat_s=3600,
                            events_stream_bytes=SMALL_EVENTS_BYTES, failure_events_per_s=1e6,
                            failure_events_burst=1_000_000, function_stats_interval_s=0.2) as node:
        code, refused = await control(nc, "DEPLOY", node.node_id, body={"name": "evil", "type": "nonsense"})
        assert code == 400, refused
        await deploy(nc, node, function_body(script, "broken", "audit.broken"))
        js = nc.jetstream()
        start = (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq

        async def flooded() -> bool:
            for _ in range(10):
                await asyncio.gather(*(request(nc, "audit.broken", b"x") for _ in range(50)))
            state = (await js.stream_info(subjects.EVENTS_STREAM)).state
            # Written several times what the stream holds: everything it held at the start is gone.
            return state.first_seq > start and state.last_seq - start >= 4 * state.messages
        await eventually(flooded, timeout=30, interval=0)

        async with NexClient(nc, "default") as client:
            rejections = [e async for e in client.events(types=["request_rejected"])]
        assert len(rejections) == 1
        assert rejections[0].data["what"]["verb"] == "DEPLOY" and rejections[0].data["why"]["code"] == 400
        audit = await js.stream_info(subjects.AUDIT_STREAM, subjects_filter=subjects.events("default", "*"))
        assert set(audit.state.subjects) == {subjects.events("default", t) for t in
                                             ("request_rejected", "workload_started")}


async def test_a_flood_of_refused_requests_is_recorded_at_a_bounded_rate_with_a_count(nats_server, nc, tmp_path):
    async with running_node(nats_server, tmp_path / "node", "flooded", heartbeat_s=3600,
                            rejection_events_per_s=1, rejection_events_burst=10) as node:
        rejected = await collect(nc, subjects.events("default", "request_rejected"))
        replies = await asyncio.gather(*(control(nc, "DEPLOY", node.node_id, body={"name": f"evil{i}"})
                                         for i in range(300)))
        assert {code for code, _ in replies} == {400}  # every request is still answered
        sent = len(replies)

        async def recorded_with_its_count() -> bool:  # once a token is back, a refusal says how many were left out
            nonlocal sent
            code, _ = await control(nc, "DEPLOY", node.node_id, body={"name": "evil-again"})
            sent += 1
            assert code == 400
            await nc.flush()
            return any("dropped_before" in json.loads(m.data)["data"] for m in rejected)
        await eventually(recorded_with_its_count, timeout=10, interval=0.1)
        await eventually(lambda: len(rejected) + sum(json.loads(m.data)["data"].get("dropped_before", 0)
                                                     for m in rejected) >= sent - 1)
    records = [json.loads(m.data)["data"] for m in rejected]
    assert 11 <= len(records) <= 15, len(records)  # the burst, and about one a second after it
    # Every refusal is a record or counted in one, but the last ones, left out after the last record.
    assert sent - 1 <= len(records) + sum(r.get("dropped_before", 0) for r in records) <= sent
