"""Status that says why: a failed workload's info carries how it ended and its last stderr
lines; an app's status names the cause of each failing replica and of its last failure."""

from __future__ import annotations

import json

from helpers import eventually, file_artifact, nex, running_node
from nex.api.apps import AppSpec
from nex.api.models import Artifact, DeployRequest, WorkloadState
from nex.client import NexClient
from nex.connection import ConnectOptions
from nex.fleet.store import AppStore

FAST = {"registry_interval_s": 0.5, "node_timeout_s": 2.0, "lease_s": 2.0, "reconcile_interval_s": 0.3}


async def test_the_info_of_a_failed_workload_says_how_it_ended_and_shows_its_last_stderr_lines(
        nats_server, programs, tmp_path):
    async with running_node(nats_server, tmp_path / "node", "fails", reconciler=False) as node:
        async with await NexClient.connect(ConnectOptions(servers=[nats_server.url])) as client:
            summary = await client.deploy(node.node_id, DeployRequest(
                name="quitter", type="native", artifact=Artifact(**file_artifact(programs["job"])),
                argv=["3"]))

            async def failed():
                info = await client.workload_info(summary.id)
                return info if info.state == WorkloadState.FAILED else None
            info = await eventually(failed, timeout=15, interval=0.1)
            assert info.reason == "exited with code 3"
            assert info.stderr_tail == ["job gives up with code 3"]

        code, out, err = await nex("workload", "info", summary.id, "--server", nats_server.url)
        assert code == 0, err
        assert "exited with code 3" in out
        assert f"Last lines on stderr (all of them: nex logs {summary.id}):\n  job gives up with code 3" in out


async def test_app_status_names_the_cause_of_the_last_failure(nats_server, programs, tmp_path):
    async with running_node(nats_server, tmp_path / "node", "reconciles", **FAST):
        async with await NexClient.connect(ConnectOptions(servers=[nats_server.url])) as client:
            store = AppStore(client.nc)
            await eventually(store.lease, timeout=15, interval=0.2)
            await store.apply(AppSpec.model_validate({"name": "shop", "workloads": [{
                "name": "worker", "type": "native", "artifact": file_artifact(programs["job"]), "argv": ["4"],
                "replicas": 1, "restart": {"backoff": "0.2s", "max_retries": 100}}]}), None)

            async def last_failure() -> dict | None:
                code, out, _ = await nex("app", "status", "shop", "--json", "--server", nats_server.url)
                view = json.loads(out) if code == 0 else None
                return view if view and view["workloads"][0]["last_failure"] else None
            view = await eventually(last_failure, timeout=30, interval=0.3)
            assert view["workloads"][0]["last_failure"].endswith("of worker failed: exited with code 4")

            code, out, err = await nex("app", "status", "shop", "--server", nats_server.url)
            assert code == 0, err
            assert "last failure: replica " in out and "of worker failed: exited with code 4" in out


def test_what_a_workload_writes_on_stderr_stays_bounded_in_its_summary():
    """A tenant's workload decides what it writes: its summary keeps the last lines only, each cut,
    so INFO and WPING replies stay small whatever it prints."""
    from datetime import datetime, timezone

    from nex.api.models import MAX_REASON_CHARS, STDERR_TAIL_LINES
    from nex.node.workloads import Workload
    from nex.runtimes.base import ExitResult

    request = DeployRequest(name="noisy", type="native", artifact=Artifact(uri="file:///x", sha256="0" * 64))
    workload = Workload(id="w1", namespace="default", request=request, node_id="N",
                        started_at=datetime.now(timezone.utc))
    for i in range(1000):
        workload.log_line("stderr", f"{i} ".encode() + b"x" * 100_000 + b"\n")
    workload.log_line("stdout", b"not kept")
    workload.state, workload.exit = WorkloadState.FAILED, ExitResult(exit_code=1, error="y" * 10_000)
    summary = workload.summary()
    assert len(summary.stderr_tail) == STDERR_TAIL_LINES
    assert summary.stderr_tail[-1].startswith("999 ") and all(len(l) <= MAX_REASON_CHARS for l in summary.stderr_tail)
    assert len(summary.reason) == MAX_REASON_CHARS and summary.reason.endswith("…")
    assert workload.record().reason == summary.reason
