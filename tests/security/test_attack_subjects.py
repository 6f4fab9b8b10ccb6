"""Attacks on the subject rule (issue 13, items 7 and 8): a keyless plain nats-py client against
real nodes on a real nats-server.

- A deploy's nats health check made the node request any subject with its own connection:
  ``$JS.API.STREAM.PURGE.NEX_EVENTS`` purged the audit stream every interval.
- A function of namespace ``evil`` could take trigger ``nex.victim.>``, receive victim's
  traffic and publish into it, under ``--auth`` too.
- A reply subject (a sync call's, or an async call's ``Nex-Reply-To``) made the agent publish
  where no workload may: on JetStream's API, or into another namespace.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from nats.aio.client import Client

from helpers import collect, control, eventually, nex, request, running_node
from nex.api import subjects
from nex.client import NexClient
from nex.connection import ConnectOptions, connect, flush_subscriptions
from nex.node.config import NodeConfig
from nex.node.node import Node

PURGE_EVENTS = f"$JS.API.STREAM.PURGE.{subjects.AUDIT_STREAM}"
VICTIM, EVIL = "victim", "evil"


async def events_kept(nc: Client) -> int:
    """How many messages the audit stream holds."""
    return (await nc.jetstream().stream_info(subjects.AUDIT_STREAM)).state.messages


async def first_event(nc: Client) -> int:
    """The sequence of the audit stream's first message: a purge moves it past every message."""
    return (await nc.jetstream().stream_info(subjects.AUDIT_STREAM)).state.first_seq


async def uploaded(nc: Client, path: Path, namespace: str = "default") -> dict[str, str]:
    """The artifact of ``path``, put into the namespace's Object Store bucket as `nex` does."""
    return (await NexClient(nc, namespace).upload_artifact(path)).model_dump(mode="json", exclude_none=True)


async def script(nc: Client, tmp_path: Path, name: str, text: str, namespace: str = "default") -> dict[str, str]:
    path = tmp_path / f"{name}.js"
    path.write_text(text)
    return await uploaded(nc, path, namespace)


async def deploy_victim(nc: Client, node: Node, tmp_path: Path) -> dict:
    code, victim = await control(nc, "DEPLOY", node.node_id, namespace=VICTIM, body={
        "name": "orders", "type": "javascript",
        "artifact": await script(nc, tmp_path, "victim", "(subject, payload) => 'victim got it'\n", VICTIM),
        "triggers": [{"subject": "nex.victim.orders"}]})
    assert code is None, victim
    return victim


# -- item 7: the node acts for a workload only within the workload's rights -----------

@pytest.mark.parametrize("node", ["none"], indirect=True)
async def test_a_health_check_cannot_purge_the_audit_stream(node: Node, nc: Client, programs, tmp_path):
    await eventually(lambda: events_kept(nc))  # the node's own events are there
    first = await first_event(nc)

    code, refused = await control(nc, "DEPLOY", node.node_id, body={
        "name": "purger", "type": "native", "artifact": await uploaded(nc, programs["ticker"]),
        "health": {"nats": PURGE_EVENTS, "interval_ms": 50}})
    code_other, other_namespace = await control(nc, "DEPLOY", node.node_id, body={
        "name": "prober", "type": "javascript", "artifact": await script(nc, tmp_path, "prober", "() => 'ok'\n"),
        "triggers": [{"subject": "nex.default.prober"}], "health": {"nats": "nex.victim.orders"}})
    # A legitimate check on the workload's own subject still runs.
    code_own, own = await control(nc, "DEPLOY", node.node_id, body={
        "name": "healthy", "type": "javascript", "artifact": await script(nc, tmp_path, "healthy", "() => 'ok'\n"),
        "triggers": [{"subject": "nex.default.healthy"}],
        "health": {"nats": "nex.default.healthy", "interval_ms": 50}})

    assert code == 400 and PURGE_EVENTS in refused["error"]["message"], refused
    assert code_other == 400 and "another namespace" in other_namespace["error"]["message"], other_namespace
    assert code_own is None, own

    async def checked_healthy() -> bool:
        _, ping = await control(nc, "WPING", own["id"])
        return ping["workloads"][0].get("health") == "healthy"
    await eventually(checked_healthy)
    _, info = await control(nc, "INFO", node.node_id)
    assert [w["name"] for w in info["workloads"]] == ["healthy"]
    assert await first_event(nc) == first, "the audit stream was purged"


@pytest.mark.parametrize("node", ["none"], indirect=True)
async def test_a_reply_subject_cannot_make_the_agent_purge_the_audit_stream(node: Node, nc: Client, tmp_path):
    code, echo = await control(nc, "DEPLOY", node.node_id, body={
        "name": "echo", "type": "javascript",
        "artifact": await script(nc, tmp_path, "echo", "(s, payload) => payload\n"),
        "triggers": [{"subject": "nex.default.echo"}, {"subject": "nex.default.jobs", "mode": "async"}]})
    assert code is None, echo
    results = await collect(nc, "nex.default.results")
    stolen = await collect(nc, "nex.victim.>")
    await flush_subscriptions(nc)
    await eventually(lambda: events_kept(nc))
    first = await first_event(nc)

    # A sync call whose reply subject is JetStream's API, or another namespace's subject.
    await nc.publish("nex.default.echo", b"{}", reply=PURGE_EVENTS)
    await nc.publish("nex.default.echo", b"{}", reply="nex.victim.orders")
    # Async calls whose Nex-Reply-To is JetStream's API, a reply inbox, another namespace.
    js = nc.jetstream()
    for reply_to in (PURGE_EVENTS, f"_INBOX.{uuid.uuid4().hex}", "nex.victim.orders"):
        await js.publish("nex.default.jobs", b"{}", headers={subjects.REPLY_TO_HEADER: reply_to})
    await js.publish("nex.default.jobs", b"last", headers={subjects.REPLY_TO_HEADER: "nex.default.results"})

    # Calls are answered in order: once this one is, the attacks above were answered or dropped.
    assert (await request(nc, "nex.default.echo", b"after")).data == b"after"
    await eventually(lambda: [m.data for m in results] == [b"last"], timeout=10)
    assert await first_event(nc) == first, "the audit stream was purged"
    assert stolen == []


# -- item 8: namespaces are tenants -----------------------------------------------------

@pytest.mark.parametrize("node", ["none"], indirect=True)
async def test_a_function_cannot_take_another_namespaces_trigger(node: Node, nc: Client, tmp_path):
    await deploy_victim(nc, node, tmp_path)
    evil = await script(nc, tmp_path, "evil", "(subject, payload) => 'evil got it'\n", EVIL)
    refused = {}
    for trigger in ("nex.victim.>", "nex.victim.orders", "nex.>", "nex.*.orders", "*.victim.>", ">"):
        code, reply = await control(nc, "DEPLOY", node.node_id, namespace=EVIL, body={
            "name": "thief", "type": "javascript", "artifact": evil, "triggers": [{"subject": trigger}]})
        refused[trigger] = (code, reply["error"]["message"] if code else reply)

    assert all(code == 400 for code, _ in refused.values()), refused
    assert "other namespaces" in refused["nex.victim.>"][1] and "nex.evil.>" in refused["nex.victim.>"][1]
    _, info = await control(nc, "INFO", node.node_id, namespace=EVIL)
    assert info["workloads"] == []
    inbox = nc.new_inbox()
    replies = await collect(nc, inbox)
    await nc.publish("nex.victim.orders", b"", reply=inbox)
    await eventually(lambda: replies)
    assert [m.data for m in replies] == [b"victim got it"]
    assert (await request(nc, "nex.victim.orders")).data == b"victim got it"


@pytest.mark.parametrize("node", ["none"], indirect=True)
async def test_a_function_cannot_publish_into_another_namespace(node: Node, nc: Client, tmp_path):
    received = await collect(nc, "nex.victim.>")
    await flush_subscriptions(nc)
    publisher = await script(nc, tmp_path, "publisher", namespace=EVIL, text="""\
async (subject, payload) => {
  try { await nex.publish("nex.victim.orders", "forged order"); return "published"; }
  catch (error) { return `${error.code}: ${error.message}`; }
}
""")
    # With a trigger in the victim's subjects, the host services would let it publish there.
    code, refused = await control(nc, "DEPLOY", node.node_id, namespace=EVIL, body={
        "name": "forger", "type": "javascript", "artifact": publisher,
        "triggers": [{"subject": "nex.evil.forge"}, {"subject": "nex.*.orders"}]})
    code_own, own = await control(nc, "DEPLOY", node.node_id, namespace=EVIL, body={
        "name": "forger", "type": "javascript", "artifact": publisher,
        "triggers": [{"subject": "nex.evil.forge"}]})
    assert code == 400 and "nex.*.orders" in refused["error"]["message"], refused
    assert code_own is None, own

    answer = (await request(nc, "nex.evil.forge")).data.decode()
    assert answer.startswith("denied: nex.victim.orders is outside the function's subjects"), answer
    await flush_subscriptions(nc)
    assert received == []


async def test_nex_apply_refuses_another_namespaces_trigger(nats_server, tmp_path):
    app = tmp_path / "thief.json"
    app.write_text(json.dumps({"name": "thief", "namespace": EVIL, "workloads": [{
        "name": "thief", "type": "javascript", "artifact": "nats://NEXCLIFILES/thief",
        "triggers": ["nex.evil.mine", "nex.*.orders"]}]}))

    code, out, err = await nex("apply", "-f", str(app), "--dry-run", "--server", nats_server.url)

    assert code != 0 and out == ""
    assert "workloads[0].triggers[1]" in err and "'nex.*.orders'" in err and "other namespaces" in err, err


async def test_namespace_subjects_confine_triggers_outside_nex(nats_server, tmp_path, nc: Client):
    hello = {namespace: await script(nc, tmp_path, "hello", "() => 'hello'\n", namespace)
             for namespace in ("payments", "shop")}
    async with running_node(nats_server, tmp_path / "node", "confined", reconciler=False,
                            namespace_subjects={"payments": ["pay.>"]}) as node:
        results = {}
        for namespace, trigger in (("payments", "pay.in"), ("payments", "orders.new"), ("shop", "pay.in"),
                                   ("shop", "nex.shop.in"), ("payments", "nex.payments.in")):
            code, reply = await control(nc, "DEPLOY", node.node_id, namespace=namespace, body={
                "name": f"fn{len(results)}", "type": "javascript", "artifact": hello[namespace],
                "triggers": [{"subject": trigger}]})
            results[(namespace, trigger)] = code, reply.get("error", {}).get("message")

    assert results[("payments", "pay.in")] == (None, None)
    assert results[("shop", "nex.shop.in")] == (None, None)
    assert results[("payments", "nex.payments.in")] == (None, None)
    assert results[("payments", "orders.new")][0] == 400
    assert "namespace_subjects" in results[("payments", "orders.new")][1]
    assert results[("shop", "pay.in")][0] == 400, "a namespace not listed gets only nex.<ns>.>"


# -- under --auth: a native service's own credentials -----------------------------------

async def test_under_auth_a_service_cannot_take_another_namespaces_trigger(tmp_path, programs):
    node = Node(NodeConfig(state_dir=tmp_path / "node", name="auth-node", port=0, auth=True, sandbox="none",
                           stop_grace_s=2.0, lameduck_s=0.2, reconciler=False))
    await node.start()
    try:
        creds = tmp_path / "deployer.creds"
        creds.write_text(node.embedded_auth.signer.mint("deployer"))
        deployer = await connect(ConnectOptions(servers=[node.server_url], creds=str(creds)),
                                 max_reconnect_attempts=0)
        try:
            code, refused = await control(deployer, "DEPLOY", node.node_id, namespace=EVIL, body={
                "name": "thief", "type": "native", "artifact": await uploaded(deployer, programs["ticker"], EVIL),
                "triggers": [{"subject": "nex.victim.>"}]})
            _, info = await control(deployer, "INFO", node.node_id, namespace=EVIL)
        finally:
            await deployer.close()
    finally:
        await node.shutdown()

    assert code == 400 and "other namespaces" in refused["error"]["message"], refused
    assert info["workloads"] == []
