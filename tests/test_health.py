"""Health checks: a TCP port, a NATS request, or the process being alive; verdicts in INFO,
in the node registry and as workload_health events."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid

import pytest

from nex.api import subjects
from nex.api.errors import ERROR_CODE_HEADER, ERROR_HEADER
from nex.node.node import Node
from nex.connection import flush_subscriptions

from helpers import collect, control, eventually, file_artifact
from test_registry import APP, entry

both_modes = pytest.mark.parametrize("node", ["none", "oci"], indirect=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listener(programs, port: int, serve_for: float | None = None, **extra) -> dict:
    argv = [str(port)] + ([str(serve_for)] if serve_for is not None else [])
    return {"name": "listener", "type": "native", "artifact": file_artifact(programs["listener"]),
            "argv": argv, **extra}


async def health_of(nc, workload_id: str) -> str | None:
    code, ping = await control(nc, "WPING", workload_id)
    assert code is None, ping
    return ping["workloads"][0].get("health")


def verdicts(events: list, workload_id: str) -> list[tuple[str, str]]:
    """(previous, health) of each workload_health event of the workload, in order."""
    found = []
    for msg in events:
        event = json.loads(msg.data)
        if event["subject"] == workload_id:
            found.append((event["data"]["previous"], event["data"]["health"]))
    return found


@both_modes
async def test_tcp_check_follows_the_port(node: Node, nc, programs):
    """Sandboxed, the service has its own network (none): the check connects from inside it."""
    events = await collect(nc, subjects.events("default", "workload_health"))
    port = free_port()
    # An app's replica: the registry lists those, with their health, for the reconciler.
    code, workload = await control(nc, "DEPLOY", node.node_id, listener(
        programs, port, serve_for=2, health={"tcp": port, "interval_ms": 100, "timeout_ms": 500, "failures": 3},
        app=APP))
    assert code is None, workload
    assert workload["health"] in ("unknown", "healthy")
    wid = workload["id"]
    await eventually(lambda: _is(nc, wid, "healthy"), timeout=5)
    await eventually(lambda: _registry_health(nc, node.node_id, "healthy"), timeout=3)
    if node.oci is not None:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        # Refused on the host's loopback: the check that passes connects inside the sandbox.

    # The listener closes its port after 2 s and lives on: unhealthy after 3 failed checks.
    await eventually(lambda: _is(nc, wid, "unhealthy"), timeout=8)
    await eventually(lambda: verdicts(events, wid) == [("unknown", "healthy"), ("healthy", "unhealthy")])
    reason = json.loads(events[-1].data)["data"]["reason"]
    assert str(port) in reason
    await eventually(lambda: _registry_health(nc, node.node_id, "unhealthy"), timeout=3)

    code, stopped = await control(nc, "UNDEPLOY", wid)
    assert code is None and stopped["state"] == "stopped"
    assert await health_of(nc, wid) is None


async def _is(nc, workload_id: str, health: str) -> bool:
    return await health_of(nc, workload_id) == health


async def _registry_health(nc, node_id: str, health: str) -> bool:
    found = await entry(nc, node_id)
    return found is not None and [w.health for w in found.workloads] == [health]


@pytest.mark.parametrize("node", ["none"], indirect=True)
async def test_nats_check_against_a_subscriber(node: Node, nc, programs):
    events = await collect(nc, subjects.events("default", "workload_health"))
    subject = f"nex.default.health.{uuid.uuid4().hex}"  # a subject the workload may use
    failing = False

    async def answer(msg):
        if failing:
            await msg.respond(b'{"error": {"code": 503, "message": "draining"}}',
                              headers={ERROR_CODE_HEADER: "503", ERROR_HEADER: "draining"})
        else:
            await msg.respond(b"ok")
    await nc.subscribe(subject, cb=answer)
    await flush_subscriptions(nc)

    code, workload = await control(nc, "DEPLOY", node.node_id, {
        "name": "ticker", "type": "native", "artifact": file_artifact(programs["ticker"]),
        "health": {"nats": subject, "interval_ms": 100, "timeout_ms": 500, "failures": 2}})
    assert code is None, workload
    wid = workload["id"]
    await eventually(lambda: _is(nc, wid, "healthy"))

    failing = True  # answered, but with an error header
    await eventually(lambda: _is(nc, wid, "unhealthy"), timeout=5)
    failing = False
    await eventually(lambda: _is(nc, wid, "healthy"), timeout=5)
    assert verdicts(events, wid) == [("unknown", "healthy"), ("healthy", "unhealthy"), ("unhealthy", "healthy")]


@pytest.mark.parametrize("node", ["none"], indirect=True)
async def test_nats_check_of_a_function_and_no_responders(node: Node, nc, tmp_path, programs):
    script = tmp_path / "hello.js"
    script.write_text("(subject, payload) => 'hello'")
    subject = f"fn.{uuid.uuid4().hex}"
    code, function = await control(nc, "DEPLOY", node.node_id, {
        "name": "hello", "type": "javascript", "artifact": file_artifact(script),
        "triggers": [{"subject": subject}], "health": {"nats": subject, "interval_ms": 100}})
    assert code is None, function
    await eventually(lambda: _is(nc, function["id"], "healthy"))

    # Nobody answers this one: NATS says so at once, and each check fails.
    code, ticker = await control(nc, "DEPLOY", node.node_id, {
        "name": "lonely", "type": "native", "artifact": file_artifact(programs["ticker"]),
        "health": {"nats": f"nex.default.nobody.{uuid.uuid4().hex}", "interval_ms": 100, "failures": 2}})
    assert code is None, ticker
    assert ticker["health"] == "unknown"
    await eventually(lambda: _is(nc, ticker["id"], "unhealthy"))


@pytest.mark.parametrize("node", ["none"], indirect=True)
async def test_without_a_check_healthy_while_it_runs(node: Node, nc, programs):
    events = await collect(nc, subjects.events("default", "workload_health"))
    code, job = await control(nc, "DEPLOY", node.node_id, {
        "name": "job", "type": "native", "lifecycle": "job", "artifact": file_artifact(programs["job"]),
        "argv": ["0"]})
    assert code is None, job
    code, workload = await control(nc, "DEPLOY", node.node_id, {
        "name": "ticker", "type": "native", "artifact": file_artifact(programs["ticker"])})
    assert code is None and workload["health"] == "healthy"
    await eventually(lambda: _ended(nc, job["id"]))
    assert await health_of(nc, job["id"]) is None, "an ended workload has no health"
    assert events == [], "only verdicts of checks are events"


async def _ended(nc, workload_id: str) -> bool:
    _, ping = await control(nc, "WPING", workload_id)
    return ping["workloads"][0]["state"] in ("stopped", "failed")


@pytest.mark.parametrize("node", ["none"], indirect=True)
async def test_a_function_has_no_tcp_check(node: Node, nc, tmp_path):
    script = tmp_path / "hello.js"
    script.write_text("(subject, payload) => 'hello'")
    code, error = await control(nc, "DEPLOY", node.node_id, {
        "name": "hello", "type": "javascript", "artifact": file_artifact(script),
        "triggers": [{"subject": "fn.tcp"}], "health": {"tcp": 8080}})
    assert code == 400 and "nats health check" in error["error"]["message"]
    _, info = await control(nc, "INFO", node.node_id)
    assert info["workloads"] == []


@pytest.mark.parametrize("node", ["none"], indirect=True)
async def test_check_stops_with_the_workload(node: Node, nc, programs):
    subject = f"nex.default.health.{uuid.uuid4().hex}"  # a subject the workload may use
    asked = []

    async def answer(msg):
        asked.append(msg)
        await msg.respond(b"ok")
    await nc.subscribe(subject, cb=answer)
    await flush_subscriptions(nc)
    code, workload = await control(nc, "DEPLOY", node.node_id, {
        "name": "ticker", "type": "native", "artifact": file_artifact(programs["ticker"]),
        "health": {"nats": subject, "interval_ms": 50}})
    assert code is None
    await eventually(lambda: len(asked) >= 3)
    code, _ = await control(nc, "UNDEPLOY", workload["id"])
    assert code is None
    count = len(asked)
    await asyncio.sleep(0.3)  # six check intervals
    assert len(asked) == count, "no check after the workload stopped"
