"""Undeploying one copy of a function loses no invocation: its subscriptions drain."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError

from nex.api.errors import from_reply
from nex.node.node import Node

from helpers import control, eventually, file_artifact

LOOPS = 200  # more calls than a copy takes in flight (64): the rest wait in its subscription


@pytest.mark.parametrize("node", ["none"], indirect=True)
async def test_undeploying_one_of_two_copies_loses_no_call(node: Node, nc, tmp_path):
    script = tmp_path / "who.js"
    # A little work per call, so that calls queue up in the copy being undeployed.
    script.write_text("(subject, payload) => { let x = 0; for (let i = 0; i < 100000; i++) x += i; return env.WHO }")
    subject = f"drain.{uuid.uuid4().hex}"
    copies = {}
    for who in ("first", "second"):
        code, workload = await control(nc, "DEPLOY", node.node_id, {
            "name": "twin", "type": "javascript", "artifact": file_artifact(script),
            "triggers": [{"subject": subject}], "env": {"WHO": who}})
        assert code is None, workload
        copies[who] = workload["id"]

    answers: dict[bytes, int] = {}
    failures: list[str] = []
    running = True

    async def caller() -> None:
        while running:
            try:
                reply = await nc.request(subject, b"", timeout=5)
            except NatsError as exc:  # a timeout or no responders: a lost call
                failures.append(repr(exc))
                continue
            error = from_reply(reply.data, reply.headers)
            if error is not None:
                failures.append(error.message)
            answers[reply.data] = answers.get(reply.data, 0) + 1

    callers = [asyncio.create_task(caller()) for _ in range(LOOPS)]
    try:
        await eventually(lambda: answers.get(b"first", 0) > 50 and answers.get(b"second", 0) > 50, timeout=10)
        code, stopped = await control(nc, "UNDEPLOY", copies["first"], timeout=10)
        assert code is None and stopped["state"] == "stopped"
        after_undeploy = sum(answers.values())
        await eventually(lambda: sum(answers.values()) >= after_undeploy + 50, timeout=10)  # calls go on
    finally:
        running = False
        await asyncio.gather(*callers)

    assert failures == []
    assert sum(answers.values()) > after_undeploy, "the second copy kept answering"


@pytest.mark.parametrize("node", ["none"], indirect=True)
async def test_once_an_undeploy_is_answered_the_subject_has_no_responder(node: Node, nc, tmp_path):
    """The node answers an undeploy only once the server has the agent's unsubscribes. Before,
    a drain that outlasted its grace (or a grace of 0) could answer first, on a busy host: a
    request sent right after found the dropped subscription still there and waited out its
    whole timeout (seen once as a flaky test_wasm stop test)."""
    script = tmp_path / "slow.js"
    script.write_text("(subject, payload) => { const end = Date.now() + 200; while (Date.now() < end) {} return 'done' }")
    for grace_ms, queued in ((0, 0), (50, 3), (0, 3)):
        subject = f"gone.{uuid.uuid4().hex}"
        code, workload = await control(nc, "DEPLOY", node.node_id, {
            "name": "slow", "type": "javascript", "artifact": file_artifact(script),
            "triggers": [{"subject": subject}]})
        assert code is None, workload
        busy = [asyncio.ensure_future(nc.request(subject, b"", timeout=1)) for _ in range(queued)]
        await nc.flush()
        code, stopped = await control(nc, "UNDEPLOY", workload["id"], {"grace_ms": grace_ms}, timeout=10)
        assert code is None and stopped["state"] == "stopped"
        with pytest.raises(NoRespondersError):
            await nc.request(subject, b"", timeout=2)
        await asyncio.gather(*busy, return_exceptions=True)
