"""Native services and jobs through the control API, on a real node and real processes."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from nex.api import subjects
from nex.node.node import Node

from helpers import ARTIFACT_ROOTS, collect, control, eventually, native_body


# Every behaviour holds for plain processes and for sandboxed ones.
both_modes = pytest.mark.parametrize("node", ["none", "oci"], indirect=True)


@both_modes
async def test_service_runs_logs_and_stops(node: Node, nc, programs):
    logs = await collect(nc, subjects.logs_filter("default"))
    events = await collect(nc, subjects.events_filter("default"))
    code, workload = await control(nc, "DEPLOY", node.node_id, native_body(
        programs["ticker"], "ticker", argv=["one", "two"], env={"GREETING": "hello"}))
    assert code is None, workload
    assert workload["state"] == "running" and workload["node_id"] == node.node_id
    assert workload["env_keys"] == ["GREETING"] and "env" not in workload
    pid = workload["pid"]
    assert os.getpgid(pid) == pid, "a workload leads its own process group"

    lines = lambda: [m.data for m in logs]  # noqa: E731
    await eventually(lambda: b"tick 2" in lines())
    # Order holds within a stream; stdout and stderr are two pipes, read side by side.
    stdout = [m.data for m in logs if m.subject.endswith(".stdout")]
    assert stdout[:3] == [b"started hello with 2 args", b"arg one", b"arg two"]
    assert any(m.subject.endswith(".stderr") and m.data == b"a line on stderr" for m in logs)

    code, ping = await control(nc, "WPING", workload["id"])
    assert code is None and ping["workloads"][0]["state"] == "running"

    code, stopped = await control(nc, "UNDEPLOY", workload["id"])
    assert code is None and stopped["state"] == "stopped"
    assert stopped["exit"]["exit_code"] == 0, "the ticker exits 0 on SIGTERM"
    assert b"stopping" in lines()
    await eventually(lambda: any(m.subject.endswith("workload_stopped") for m in events))
    types = [m.subject.rsplit(".", 1)[1] for m in events]
    assert types[:1] == ["workload_started"]


@both_modes
async def test_job_runs_to_completion_and_reports_exit_code(node: Node, nc, programs):
    events = await collect(nc, subjects.events_filter("default"))
    code, ok = await control(nc, "DEPLOY", node.node_id, native_body(
        programs["job"], "job-ok", lifecycle="job", argv=["0"]))
    assert code is None
    code, bad = await control(nc, "DEPLOY", node.node_id, native_body(
        programs["job"], "job-bad", lifecycle="job", argv=["3"]))
    assert code is None

    async def states():
        _, info = await control(nc, "INFO", node.node_id)
        return {w["name"]: w for w in info["workloads"]}
    finished = await eventually(lambda: _ended(states))
    assert finished["job-ok"]["state"] == "stopped" and finished["job-ok"]["exit"]["exit_code"] == 0
    assert finished["job-bad"]["state"] == "failed" and finished["job-bad"]["exit"]["exit_code"] == 3
    failed = [m for m in events if m.subject.endswith("workload_failed")]
    assert len(failed) == 1 and b'"exit_code":3' in failed[0].data


async def _ended(states):
    current = await states()
    if all(w["state"] in ("stopped", "failed") for w in current.values()):
        return current
    return None


@both_modes
async def test_stop_kills_a_group_that_ignores_sigterm(node: Node, nc, programs):
    node.config.stop_grace_s = 0.3
    code, workload = await control(nc, "DEPLOY", node.node_id, native_body(programs["stubborn"], "stubborn"))
    assert code is None
    pgid = workload["pid"]
    await eventually(lambda: _group_size(pgid) == 2)
    code, stopped = await control(nc, "UNDEPLOY", workload["id"])
    assert code is None and stopped["exit"]["signal"] == signal.SIGKILL
    await eventually(lambda: _group_size(pgid) == 0)  # no process of the group survives


def _group_size(pgid: int) -> int:
    """Live (not zombie) processes in the group."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = stat[0], int(stat[2])
        if group == pgid and state != "Z":
            count += 1
    return count


@pytest.mark.parametrize("sandbox", ["none", "auto"])
async def test_node_shutdown_stops_every_workload(nats_server, tmp_path, nc, programs, sandbox):
    from nex.node.config import NodeConfig

    node = Node(NodeConfig(artifact_roots=ARTIFACT_ROOTS,
                           server=nats_server.url, state_dir=tmp_path / "n", stop_grace_s=1, sandbox=sandbox))
    await node.start()
    stopped_events = await collect(nc, subjects.events_filter("system"))
    pids = []
    for i in range(3):
        _, workload = await control(nc, "DEPLOY", node.node_id, native_body(programs["ticker"], f"t{i}"))
        pids.append(workload["pid"])
    await node.shutdown()
    await eventually(lambda: all(_group_size(pid) == 0 for pid in pids))
    await eventually(lambda: any(m.subject.endswith("node_stopped") for m in stopped_events))
    await asyncio.sleep(0)
