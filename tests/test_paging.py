"""Replies that never overflow: INFO and WPING page a node's workloads under the server's
max_payload, and a node's registry record is split over several keys when it must be.

The nats-server here has a max_payload of 8 KiB, so a few dozen workloads overflow one
message, as some thousands do under the default of 1 MiB.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from nex.api.apps import AppSpec, AppWorkload
from nex.api.models import NodePing, NodeState, Resources, WorkloadPing, WorkloadSummary
from nex.api.records import NodeRecord, ReplicaRecord
from nex.api.paging import assemble, encoded, fill_page, part_key, split_record
from nex.client import NexClient
from nex.connection import ConnectOptions, connect
from nex.client.appstatus import app_view
from nex.fleet.store import AppStore
from nex.natsserver import NatsServer

from helpers import control, eventually, file_artifact, nex, running_node

MAX_PAYLOAD = 8 * 1024
FUNCTIONS = 40


@pytest.fixture
async def small_server(tmp_path: Path):
    config = tmp_path / "small.conf"
    config.write_text(f"max_payload: {MAX_PAYLOAD}\n")
    server = NatsServer(store_dir=tmp_path / "js", port=0, extra_args=["-c", str(config)])
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def small_nc(small_server):
    nc = await connect(ConnectOptions(servers=[small_server.url]), max_reconnect_attempts=0)
    yield nc
    await nc.close()


async def deploy_functions(nc, node, script: Path, count: int, app: dict | None = None) -> list[str]:
    ids = []
    for i in range(count):
        body = {"name": f"fn{i}", "type": "javascript", "artifact": file_artifact(script),
                "triggers": [{"subject": f"small.fn{i}"}]}
        if app is not None:
            body |= {"name": app["workload"], "app": {"name": app["name"], "revision": app["revision"]},
                     "triggers": [{"subject": "small.app"}]}
        code, summary = await control(nc, "DEPLOY", node.node_id, body=body, timeout=15)
        assert code is None, summary
        ids.append(summary["id"])
    return ids


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "fn.js"
    path.write_text("(subject, payload) => 'ok'")
    return path


async def test_info_and_wping_page_past_max_payload(small_server, small_nc, tmp_path, script):
    async with running_node(small_server, tmp_path / "node", "small") as node:
        ids = await deploy_functions(small_nc, node, script, FUNCTIONS)

        # The first page, as natscli asks it (an empty body), has a cursor.
        msg = await small_nc.request("$NEX.SVC.default.control.WPING", b"", timeout=10)
        assert len(msg.data) <= MAX_PAYLOAD
        first = json.loads(msg.data)
        assert "error" not in first and first["next"] == first["workloads"][-1]["id"]
        assert 0 < len(first["workloads"]) < FUNCTIONS

        # INFO.<node> with {"after": next} goes on, page by page, until a page has no next.
        listed = [w["id"] for w in first["workloads"]]
        after, pages = first["next"], 1
        while after is not None and pages < FUNCTIONS:
            msg = await small_nc.request(f"$NEX.SVC.default.control.INFO.{node.node_id}",
                                         json.dumps({"after": after}).encode(), timeout=10)
            assert len(msg.data) <= MAX_PAYLOAD
            page = json.loads(msg.data)
            assert "error" not in page, page
            listed += [w["id"] for w in page["workloads"]]
            after, pages = page.get("next"), pages + 1
        assert after is None and pages > 2
        assert listed == sorted(ids)

        # INFO pages the same way, and a limit is kept.
        code, info = await control(small_nc, "INFO", node.node_id, timeout=10)
        assert code is None and info["next"] and info["workload_count"] == FUNCTIONS
        code, limited = await control(small_nc, "INFO", node.node_id, body={"limit": 3}, timeout=10)
        assert code is None and [w["id"] for w in limited["workloads"]] == sorted(ids)[:3]
        assert limited["next"] == sorted(ids)[2]
        code, bad = await control(small_nc, "WPING", body={"limit": 0}, timeout=10)
        assert code == 400 and "limit" in bad["error"]["message"]

        # The client and the CLI follow the pages.
        client = NexClient(small_nc)
        assert sorted(w.id for w in await client.workloads(expected_nodes=1)) == sorted(ids)
        assert sorted(w.id for w in (await client.node_info(node.node_id)).workloads) == sorted(ids)
        status, out, err = await nex("--server", small_server.url, "workload", "ls", "--json")
        assert status == 0, err
        assert sorted(w["id"] for w in json.loads(out)) == sorted(ids)


async def test_registry_splits_a_record_past_max_payload(small_server, small_nc, tmp_path, script):
    """A node with more app replicas than one KV value holds stays registered, and the
    reconciler counts every replica: asked for one fewer, it stops exactly one."""
    count = 60
    workload = AppWorkload(name="web", type="javascript", artifact=file_artifact(script),
                           triggers=[{"subject": "small.app"}], replicas=count - 1)
    app = {"name": "big", "workload": "web", "revision": workload.revision()}
    async with running_node(small_server, tmp_path / "node", "small") as node:
        ids = await deploy_functions(small_nc, node, script, count, app=app)
        store = AppStore(small_nc)

        async def whole_record():
            nodes = await store.nodes()
            return nodes and len(nodes[0].workloads) == count and nodes[0]

        record = await eventually(whole_record, timeout=10)
        assert sorted(r.id for r in record.workloads) == sorted(ids)
        kv = await small_nc.jetstream().key_value("NEX_NODES")
        keys = set(await kv.keys())
        assert node.node_id in keys and part_key(node.node_id, 1) in keys
        assert await NexClient(small_nc).live_node_count() == 1

        applied = await store.apply(AppSpec(name="big", workloads=[workload]))

        async def settled():
            status = await store.get_status("default", "big")
            view = app_view(applied, await store.nodes(), status)
            stopped = status is not None and any("stopped web" in e for e in status.events)
            return stopped and (view.running, view.desired) == (count - 1, count - 1) and status

        status = await eventually(settled, timeout=15)
        assert [e for e in status.events if "stopped web" in e or "placed" in e] == [
            next(e for e in status.events if "stopped web" in e)]
        running = [w for w in await NexClient(small_nc).workloads(expected_nodes=1) if w.state == "running"]
        assert len(running) == count - 1


# -- the pure parts -------------------------------------------------------------------------

NODE_ID = "N" + "A" * 55
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _summary(i: int) -> WorkloadSummary:
    return WorkloadSummary(id=f"w{i:04d}", name=f"fn{i}", namespace="default", type="javascript",
                           lifecycle="function", state="running", node_id=NODE_ID,
                           artifact={"uri": "file:///fn.js", "sha256": "0" * 64}, started_at=NOW)


def test_a_page_fits_and_says_where_the_next_begins():
    workloads = [_summary(i) for i in range(100)]
    page = fill_page(WorkloadPing(node_id=NODE_ID, workloads=[]), iter(workloads), 8192)
    assert len(encoded(page)) <= 8192 and page.next == page.workloads[-1].id
    assert page.workloads == workloads[:len(page.workloads)]
    last = fill_page(WorkloadPing(node_id=NODE_ID, workloads=[]), iter(workloads[-3:]), 8192)
    assert last.next is None and len(last.workloads) == 3
    # A reply too small for one workload still makes progress: one a page.
    one = fill_page(WorkloadPing(node_id=NODE_ID, workloads=[]), iter(workloads), 100)
    assert [w.id for w in one.workloads] == ["w0000"] and one.next == "w0000"


def _record(replicas: int, seq: int = 7) -> NodeRecord:
    ping = NodePing(node_id=NODE_ID, name="n", version="0", api_version="v1", uptime_s=1, state=NodeState.RUNNING,
                    tags={}, workload_count=replicas)
    return NodeRecord(
        node=ping, resources=Resources(cpus=1, memory_bytes=1, memory_available_bytes=1, load_1m=0),
        runtimes=["javascript"], seq=seq,
        workloads=[ReplicaRecord(id=f"r{i:05d}", name="web", namespace="default", type="javascript",
                                 lifecycle="function", state="running", started_at=NOW,
                                 app={"name": "big", "revision": "0" * 12}) for i in range(replicas)])


def test_a_record_split_in_parts_is_put_back_whole():
    record = _record(5000)
    head, parts = split_record(record, 64 * 1024)
    assert parts and head.parts == len(parts) + 1
    assert all(len(encoded(v)) <= 64 * 1024 for v in [head, *parts])
    values = [(part_key(NODE_ID, p.part), encoded(p)) for p in parts] + [(NODE_ID, encoded(head))]
    assert assemble(values) == ([record], [], [])
    # A small record is one key, as before.
    assert split_record(_record(3), 64 * 1024) == (_record(3), [])


def test_a_record_read_between_its_parts_and_itself_is_left_out():
    old_head, _ = split_record(_record(5000, seq=7), 64 * 1024)
    new_head, new_parts = split_record(_record(5000, seq=8), 64 * 1024)
    torn = [(part_key(NODE_ID, p.part), encoded(p)) for p in new_parts] + [(NODE_ID, encoded(old_head))]
    assert assemble(torn) == ([], [], [NODE_ID])
    missing = [(NODE_ID, encoded(new_head))]
    assert assemble(missing) == ([], [], [NODE_ID])
    # Written again during the read: the later values win, and it is whole.
    again = torn + [(NODE_ID, encoded(new_head))]
    assert assemble(again).records == [_record(5000, seq=8)]
