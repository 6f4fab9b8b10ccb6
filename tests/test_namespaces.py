"""Namespaces isolate: what runs in one is invisible and unreachable from another.

Trigger subjects are the exception, on purpose: they are plain NATS subjects that
any client of the account can request (see docs/control-api.md).
"""

from __future__ import annotations

import json

import pytest
from nats.errors import NoRespondersError

from nex.api.errors import WorkloadNotFound
from nex.client import NexClient
from nex.node.node import Node

from helpers import collect, control, eventually, file_artifact, nex

A, B = "team-a", "team-b"


async def deploy_hello(nc, node: Node, namespace: str, tmp_path) -> dict:
    """A JavaScript function on ns.test.hello that answers 'hello from <namespace>'."""
    script = tmp_path / f"hello-{namespace}.js"
    script.write_text(f"(subject, payload) => 'hello from {namespace[-1]}'\n")
    code, function = await control(nc, "DEPLOY", node.node_id, namespace=namespace, body={
        "name": "hello", "type": "javascript", "artifact": file_artifact(script),
        "triggers": [{"subject": "ns.test.hello"}]})
    assert code is None, function
    return function


@pytest.fixture
async def in_a(node: Node, nc, programs, tmp_path):
    """A ticker service and a JavaScript function, both in namespace A; every feed message recorded."""
    feed = await collect(nc, "$NEX.FEED.>")
    code, ticker = await control(nc, "DEPLOY", node.node_id, namespace=A, body={
        "name": "ticker", "type": "native", "artifact": file_artifact(programs["ticker"])})
    assert code is None, ticker
    function = await deploy_hello(nc, node, A, tmp_path)
    return {"ticker": ticker, "function": function, "feed": feed}


async def test_node_wide_verbs_of_b_do_not_list_a(node, nc, in_a):
    code, wping = await control(nc, "WPING", namespace=B)
    assert code is None and wping["workloads"] == []
    code, info = await control(nc, "INFO", node.node_id, namespace=B)
    assert code is None and info["workloads"] == [] and info["workload_count"] == 0
    code, ping = await control(nc, "PING", node.node_id, namespace=B)
    assert code is None and ping["workload_count"] == 0
    code, own = await control(nc, "WPING", namespace=A)
    assert sorted(w["name"] for w in own["workloads"]) == ["hello", "ticker"]


@pytest.mark.parametrize("verb", ["UNDEPLOY", "WPING"])
async def test_a_workload_is_unreachable_on_b_subjects(node, nc, in_a, verb):
    for workload in (in_a["ticker"], in_a["function"]):
        with pytest.raises(NoRespondersError):
            await control(nc, verb, workload["id"], namespace=B)
    code, ping = await control(nc, "WPING", in_a["ticker"]["id"], namespace=A)
    assert code is None and ping["workloads"][0]["state"] == "running"


async def test_the_client_of_b_reports_a_workload_as_not_found(node, nc, in_a):
    client = NexClient(nc, namespace=B, timeout=2)
    wid = in_a["ticker"]["id"]
    with pytest.raises(WorkloadNotFound) as undeploy:
        await client.undeploy(wid)
    with pytest.raises(WorkloadNotFound) as info:
        await client.workload_info(wid)
    assert undeploy.value.code == 404 and info.value.code == 404
    assert await client.workloads(wait=0.3, expected_nodes=1) == []


async def test_feeds_of_a_go_only_to_a(node, nc, in_a):
    ids = {in_a["ticker"]["id"], in_a["function"]["id"]}
    assert await nc.request("ns.test.hello", b"", timeout=5)  # a function_invoked event
    feed = in_a["feed"]

    def about_a(msg) -> bool:
        return any(wid in msg.subject or wid.encode() in msg.data for wid in ids)

    await eventually(lambda: any(".logs." in m.subject for m in feed if about_a(m)), timeout=10)
    await eventually(lambda: any(m.subject.endswith("function_invoked") for m in feed), timeout=5)
    wrong = [m.subject for m in feed if about_a(m) and not m.subject.startswith(f"$NEX.FEED.{A}.")]
    assert wrong == []


async def test_the_cli_in_b_shows_nothing_of_a(node, nc, nats_server, in_a):
    url, wid = nats_server.url, in_a["ticker"]["id"]
    await eventually(lambda: any(wid in m.subject for m in in_a["feed"]), timeout=10)  # a line is logged

    code, out, err = await nex("workload", "ls", "-n", B, "--json", "--server", url)
    assert code == 0, err
    assert wid not in out and in_a["function"]["id"] not in out
    code, out, err = await nex("workload", "ls", "-n", A, "--json", "--server", url)
    assert code == 0 and wid in out, err

    code, out, err = await nex("logs", wid, "-n", B, "--server", url)
    assert out == ""
    code, out, _ = await nex("logs", wid, "-n", A, "--server", url)
    assert code == 0 and out != ""

    code, out, err = await nex("events", "-n", B, "--json", "--server", url)
    assert code == 0, err
    assert wid not in out and in_a["function"]["id"] not in out
    code, out, _ = await nex("events", "-n", A, "--json", "--server", url)
    started = [json.loads(line) for line in out.splitlines()]
    assert {e["subject"] for e in started} >= {wid, in_a["function"]["id"]}


async def test_a_function_of_a_answers_its_trigger_from_anywhere(node, nc, in_a):
    # Trigger subjects are not namespaced: any client of the account can call them.
    reply = await nc.request("ns.test.hello", b"", timeout=5)
    assert reply.data == b"hello from a"
    with pytest.raises(NoRespondersError):
        await nc.request("ns.test.nothing", b"", timeout=1)


async def test_another_namespace_can_subscribe_the_same_trigger(node, nc, in_a, tmp_path):
    # The documented gap: queue groups are per namespace, so B's copy gets every call too.
    await deploy_hello(nc, node, B, tmp_path)
    inbox = nc.new_inbox()
    replies = await collect(nc, inbox)
    await nc.publish("ns.test.hello", b"", reply=inbox)
    await eventually(lambda: len(replies) == 2, timeout=5)
    assert sorted(m.data for m in replies) == [b"hello from a", b"hello from b"]
