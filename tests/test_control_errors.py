"""Bad input gets a clear error reply, and the node keeps serving what already runs."""

from __future__ import annotations

import json

import pytest
from nats.errors import NoRespondersError

from nex.api import subjects
from nex.api.errors import ERROR_CODE_HEADER, ERROR_HEADER
from nex.api.models import MAX_REQUEST_BYTES
from nex.connection import ConnectOptions, connect
from nex.natsserver import NatsServer
from nex.node.node import Node

from helpers import control, file_artifact, running_node


@pytest.fixture
async def running(node: Node, nc, programs):
    """A ticker that must survive every bad request of a test."""
    code, workload = await control(nc, "DEPLOY", node.node_id, {
        "name": "survivor", "type": "native", "artifact": file_artifact(programs["ticker"])})
    assert code is None
    yield workload
    code, ping = await control(nc, "WPING", workload["id"])
    assert code is None and ping["workloads"][0]["state"] == "running", "bad input disturbed a workload"


async def deploy_raw(nc, node: Node, payload: bytes):
    msg = await nc.request(subjects.control("default", "DEPLOY", node.node_id), payload, timeout=5)
    return msg


@pytest.mark.parametrize("payload, words", [
    (b"{not json", "invalid request"),
    (b"[]", "invalid request"),
    (json.dumps({"name": "x", "type": "native", "artifact": {"uri": "file:///x", "sha256": "0" * 64},
                 "colour": "blue"}).encode(), "colour: Extra inputs are not permitted"),
    (json.dumps({"name": "x", "type": "native", "artifact": {"uri": "file:///x", "sha256": "0" * 64},
                 "argv": "not-a-list"}).encode(), "argv"),
    (json.dumps({"name": "has space", "type": "native",
                 "artifact": {"uri": "file:///x", "sha256": "0" * 64}}).encode(), "name"),
    (json.dumps({"name": "x", "type": "cobol", "artifact": {"uri": "file:///x", "sha256": "0" * 64}}).encode(),
     "type"),
    (json.dumps({"name": "x", "type": "native", "artifact": {"uri": "http://x", "sha256": "0" * 64}}).encode(),
     "nats://, file:// or oci://"),
    (json.dumps({"name": "x", "type": "javascript",
                 "artifact": {"uri": "file:///x", "sha256": "0" * 64}}).encode(), "trigger"),
    (json.dumps({"name": "x", "type": "native", "limits": {"memory_mib": -1},
                 "artifact": {"uri": "file:///x", "sha256": "0" * 64}}).encode(), "limits.memory_mib"),
])
async def test_malformed_deploy_is_a_400_with_the_reason(node, nc, running, payload, words):
    msg = await deploy_raw(nc, node, payload)
    assert msg.headers[ERROR_CODE_HEADER] == "400"
    body = json.loads(msg.data)
    assert body["error"]["code"] == 400
    assert words in body["error"]["message"]
    assert msg.headers[ERROR_HEADER] == " ".join(body["error"]["message"].split())[:512]


async def test_oversized_request_is_refused(node, nc, running):
    msg = await deploy_raw(nc, node, b" " * (MAX_REQUEST_BYTES + 1))
    assert msg.headers[ERROR_CODE_HEADER] == "400"
    assert "over the limit" in json.loads(msg.data)["error"]["message"]


async def test_unknown_workload_and_node_have_no_responder(node, nc, running):
    with pytest.raises(NoRespondersError):
        await control(nc, "UNDEPLOY", "NOSUCHWORKLOAD")
    with pytest.raises(NoRespondersError):
        await control(nc, "INFO", "NNOSUCHNODE")


async def test_another_namespace_cannot_reach_a_workload(node, nc, running):
    with pytest.raises(NoRespondersError):
        await control(nc, "UNDEPLOY", running["id"], namespace="other")
    code, ping = await control(nc, "WPING", namespace="other")
    assert code is None and ping["workloads"] == []


async def test_missing_artifact_is_a_404(node, nc, running, tmp_path):
    code, body = await control(nc, "DEPLOY", node.node_id, {
        "name": "gone", "type": "native", "artifact": {"uri": f"file://{tmp_path}/nothing", "sha256": "0" * 64}})
    assert code == 404 and "artifact not found" in body["error"]["message"]
    code, body = await control(nc, "DEPLOY", node.node_id, {
        "name": "gone", "type": "native", "artifact": {"uri": "nats://NOBUCKET/key", "sha256": "0" * 64}})
    assert code == 404 and "nats://NOBUCKET/key" in body["error"]["message"]


async def test_hash_mismatch_refuses_to_run(node, nc, running, programs):
    artifact = file_artifact(programs["ticker"])
    artifact["sha256"] = "f" * 64
    code, body = await control(nc, "DEPLOY", node.node_id, {"name": "tampered", "type": "native", "artifact": artifact})
    assert code == 400 and "sha256" in body["error"]["message"]
    _, info = await control(nc, "INFO", node.node_id)
    assert [w["name"] for w in info["workloads"]] == ["survivor"]


@pytest.mark.parametrize("content, words", [
    (b"echo hi\n", "not an ELF executable"),
    (b"", "not an ELF executable"),
    (b"\x7fELF\x01\x01\x01" + b"\0" * 40, "32-bit"),
])
async def test_non_executable_native_artifact_is_refused(node, nc, running, tmp_path, content, words):
    path = tmp_path / "artifact"
    path.write_bytes(content)
    code, body = await control(nc, "DEPLOY", node.node_id, {"name": "bad", "type": "native",
                                                            "artifact": file_artifact(path)})
    assert code == 400 and words in body["error"]["message"]


async def test_swapped_object_in_the_store_is_refused(node, nc, running, programs):
    js = nc.jetstream()
    store = await js.create_object_store("ARTS")
    await store.put("job", b"\x7fELF not the bytes that were hashed")
    artifact = file_artifact(programs["job"])  # not in the node's cache yet
    artifact["uri"] = "nats://ARTS/job"
    code, body = await control(nc, "DEPLOY", node.node_id, {"name": "swapped", "type": "native", "artifact": artifact})
    assert code == 400 and "sha256" in body["error"]["message"]
    await store.put("job", programs["job"].read_bytes())
    code, body = await control(nc, "DEPLOY", node.node_id, {
        "name": "fromstore", "type": "native", "lifecycle": "job", "artifact": artifact})
    assert code is None and body["state"] == "running"


async def test_srv_discovery_answers(node, nc):
    msg = await nc.request("$SRV.PING.nex-node", b"", timeout=2)
    ping = json.loads(msg.data)
    assert ping["type"] == "io.nats.micro.v1.ping_response" and ping["metadata"]["node_id"] == node.node_id
    info = json.loads((await nc.request("$SRV.INFO.nex-node", b"", timeout=2)).data)
    assert {e["name"] for e in info["endpoints"]} >= {"ping", "info", "deploy", "lameduck", "wping"}
    await control(nc, "PING")
    stats = json.loads((await nc.request("$SRV.STATS.nex-node", b"", timeout=2)).data)
    ping_stats = next(e for e in stats["endpoints"] if e["name"] == "ping")
    assert ping_stats["num_requests"] >= 1


async def test_lameduck_refuses_new_work_then_exits(node, nc, programs):
    code, reply = await control(nc, "LAMEDUCK", node.node_id)
    assert code is None and reply["state"] == "lameduck"
    code, body = await control(nc, "DEPLOY", node.node_id, {
        "name": "late", "type": "native", "artifact": file_artifact(programs["ticker"])})
    assert code == 409 and "lame duck" in body["error"]["message"]
    code, ping = await control(nc, "PING", node.node_id)
    assert ping["state"] == "lameduck"


async def test_javascript_that_does_not_compile_is_refused(node, nc, running, tmp_path):
    script = tmp_path / "broken.js"
    script.write_text("(subject, payload) => {\n  return 'a' +;\n}\n")
    code, body = await control(nc, "DEPLOY", node.node_id, {
        "name": "broken", "type": "javascript", "artifact": file_artifact(script),
        "triggers": [{"subject": "broken.fn"}]})
    assert code == 400 and "SyntaxError" in body["error"]["message"]
    with pytest.raises(NoRespondersError):
        await nc.request("broken.fn", b"", timeout=1)


async def test_a_reply_over_max_payload_comes_in_pages(tmp_path):
    """INFO and WPING list every workload: past the server's max_payload the node answers the
    first page with a cursor (no longer a 500), and one workload is still one request away."""
    config = tmp_path / "small.conf"
    config.write_text("max_payload: 16384\n")
    server = NatsServer(store_dir=tmp_path / "js", port=0, extra_args=["-c", str(config)])
    await server.start()
    try:
        nc = await connect(ConnectOptions(servers=[server.url]), max_reconnect_attempts=0)
        script = tmp_path / "fn.js"
        script.write_text("(subject, payload) => 'ok'")
        async with running_node(server, tmp_path / "node", "small") as node:
            ids = []
            for i in range(40):
                code, summary = await control(nc, "DEPLOY", node.node_id, body={
                    "name": f"fn{i}", "type": "javascript", "artifact": file_artifact(script),
                    "triggers": [{"subject": f"small.fn{i}"}]}, timeout=15)
                assert code is None, summary
                ids.append(summary["id"])
            code, reply = await control(nc, "WPING", timeout=10)
            assert code is None and reply["next"] and len(reply["workloads"]) < 40
            code, reply = await control(nc, "INFO", node.node_id, timeout=10)
            assert code is None and reply["next"] and len(reply["workloads"]) < 40
            code, reply = await control(nc, "WPING", ids[7], timeout=10)
            assert code is None and [w["id"] for w in reply["workloads"]] == [ids[7]]
        await nc.close()
    finally:
        await server.stop()
