"""Isolation tiers: each node advertises its tier (nex.isolation), a workload may require one, and
placement and deploys honour it.

One plain-process node and one gVisor node (skipped where runsc does not run) on one server.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from pydantic import ValidationError

from nex.api import appsig
from nex.api.apps import AppWorkload
from nex.api.errors import BadRequest, Unavailable
from nex.api.models import AuctionRequest, DeployRequest, Isolation, NodeState, WorkloadType, node_isolation
from nex.client import NexClient
from nex.placement.scoring import Bidder, decline_reason

from helpers import control, eventually, file_artifact, nex, running_node, ticker

FUNCTIONS = Path(__file__).parent / "functions"


# -- the rules, pure ----------------------------------------------------------------------------

def test_tiers_are_ordered_and_the_older_tags_are_aliases():
    assert Isolation.GVISOR.meets(Isolation.CONTAINER) and Isolation.CONTAINER.meets(Isolation.CONTAINER)
    assert not Isolation.CONTAINER.meets(Isolation.GVISOR) and not Isolation.PROCESS.meets(Isolation.CONTAINER)
    assert Isolation.PROCESS.meets(None)
    assert node_isolation({"nex.isolation": "gvisor"}) == Isolation.GVISOR
    assert node_isolation({"nex.sandbox": "runc"}) == Isolation.CONTAINER
    assert node_isolation({"nex.sandbox": "runsc"}) == Isolation.GVISOR
    assert node_isolation({"nex.unsafe": "true"}) == Isolation.PROCESS
    assert node_isolation({}) == Isolation.PROCESS


def test_a_bidder_below_the_tier_declines_saying_why():
    bidder = Bidder("N1", "plain", NodeState.RUNNING, {"nex.isolation": "container"},
                    None, frozenset({WorkloadType.NATIVE}), 0)
    request = AuctionRequest(type=WorkloadType.NATIVE, isolation=Isolation.GVISOR)
    assert decline_reason(request, bidder, 1000, 0) == \
        "node plain isolates workloads as container, the workload needs at least gvisor"
    assert decline_reason(request.model_copy(update={"isolation": Isolation.CONTAINER}), bidder, 1000, 0) is None


def test_a_function_cannot_require_a_tier():
    body = {"name": "f", "type": "javascript", "artifact": {"uri": "nats://b/k", "sha256": "0" * 64},
            "triggers": [{"subject": "x"}], "isolation": "gvisor"}
    with pytest.raises(ValidationError) as caught:
        DeployRequest.model_validate(body)
    assert "isolation applies to services and jobs" in str(caught.value)
    with pytest.raises(ValidationError):
        AppWorkload.model_validate({k: v for k, v in body.items() if k != "namespace"})


def test_an_apps_revision_changes_only_when_it_requires_a_tier():
    base = {"name": "s", "type": "native", "artifact": {"uri": "nats://b/k", "sha256": "0" * 64}}
    plain = AppWorkload.model_validate(base)
    assert "isolation" not in json.dumps(appsig.template(plain)), "the digests of apps signed before stay"
    assert AppWorkload.model_validate({**base, "isolation": "gvisor"}).revision() != plain.revision()


# -- real nodes ---------------------------------------------------------------------------------

@pytest.fixture
async def tiers(nats_server, tmp_path):
    """(plain-process node, gVisor node); the plain one claims nex.isolation=gvisor in its config tags."""
    from conftest import sandbox_verdict

    reason = await sandbox_verdict(tmp_path / "probe", "gvisor")
    if reason is not None:
        pytest.skip(f"this host cannot sandbox with gvisor: {reason}")
    async with AsyncExitStack() as stack:
        plain = await stack.enter_async_context(running_node(
            nats_server, tmp_path / "plain", "plain", tags={"nex.isolation": "gvisor", "nex.sandbox": "runsc"}))
        gvisor = await stack.enter_async_context(running_node(nats_server, tmp_path / "gv", "gv", sandbox="gvisor"))
        yield plain, gvisor


async def test_nodes_advertise_their_tier_and_a_config_tag_cannot_claim_one(tiers, nc):
    plain, gvisor = tiers
    _, ping = await control(nc, "PING", plain.node_id)
    assert ping["tags"]["nex.isolation"] == "process" and ping["tags"]["nex.unsafe"] == "true"
    assert "nex.sandbox" not in ping["tags"], "the tier's tags, aliases included, are the node's own"
    _, ping = await control(nc, "PING", gvisor.node_id)
    assert ping["tags"]["nex.isolation"] == "gvisor" and ping["tags"]["nex.sandbox"] == "runsc"


async def test_placement_finds_the_tier_and_a_direct_deploy_below_it_is_refused(tiers, nc, nats_server, programs):
    plain, gvisor = tiers
    client = NexClient(nc)
    for _ in range(2):  # the plain node never wins, whatever the scores
        summary = await client.devrun(programs["ticker"], name="t", isolation="container")
        assert summary.node_id == gvisor.node_id
        await client.undeploy(summary.id)

    code, error = await control(nc, "DEPLOY", plain.node_id, ticker(programs, isolation="gvisor"))
    assert code == 400
    assert error["error"]["message"].startswith("this node isolates workloads as process (its nex.isolation tag); "
                                                "the workload requires at least gvisor")
    _, info = await control(nc, "INFO", plain.node_id)
    assert not [w for w in info["workloads"] if w["name"] == "ticker"], "a refused deploy leaves nothing"

    code, out, err = await nex("devrun", str(programs["ticker"]), "--isolation", "gvisor", "--node", "plain",
                               "--server", nats_server.url)
    assert code == 1 and "isolates workloads as process" in err, err
    code, out, err = await nex("node", "ls", "--server", nats_server.url)
    assert code == 0, err
    rows = {line.split()[1]: line.split() for line in out.splitlines()[1:] if line.strip()}
    column = out.splitlines()[0].split().index("ISOLATION")
    assert rows["plain"][column] == "process" and rows["gv"][column] == "gvisor"
    code, out, err = await nex("node", "info", "gv", "--server", nats_server.url)
    assert code == 0 and "gvisor (runsc): gVisor's kernel" in out, out


async def test_no_node_of_the_tier_is_an_error_that_says_why(nats_server, tmp_path, nc, programs):
    async with running_node(nats_server, tmp_path / "p", "only-plain"):
        with pytest.raises((Unavailable, BadRequest)) as caught:
            await NexClient(nc).devrun(programs["ticker"], name="t", isolation="gvisor")
    assert "isolates workloads as process, the workload needs at least gvisor" in str(caught.value)


async def test_a_function_requiring_a_tier_is_a_400(nats_server, tmp_path, nc):
    async with running_node(nats_server, tmp_path / "p", "fn") as node:
        body = {"name": "f", "type": "javascript", "artifact": file_artifact(FUNCTIONS / "tick.js"),
                "triggers": [{"subject": "echo"}], "isolation": "container"}
        code, error = await control(nc, "DEPLOY", node.node_id, body)
    assert code == 400 and "a function runs in the node's function agent" in error["error"]["message"]


async def test_an_app_that_requires_gvisor_runs_only_on_gvisor_nodes(tiers, nc, nats_server, tmp_path, programs):
    """Through nex apply and the reconciler: the app file's isolation reaches the auctions."""
    from nex.fleet.store import AppStore

    plain, gvisor = tiers
    await eventually(AppStore(nc).lease, timeout=15, interval=0.2)
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "ticker").write_bytes(programs["ticker"].read_bytes())
    app_file = tmp_path / "app" / "tenant.yaml"
    app_file.write_text(json.dumps({"name": "tenant", "workloads": [{
        "name": "ticker", "type": "native", "artifact": "ticker", "replicas": 2, "isolation": "gvisor"}]}))
    code, out, err = await nex("apply", "-f", str(app_file), "--server", nats_server.url)
    assert code == 0, err

    async def placed():
        code, out, _ = await nex("app", "status", "tenant", "--json", "--server", nats_server.url)
        view = json.loads(out) if code == 0 else None
        return view if view and view["running"] == 2 else None
    view = await eventually(placed, timeout=30, interval=0.3)
    assert {r["node_name"] for r in view["workloads"][0]["replicas"]} == {"gv"}
    code, out, err = await nex("app", "delete", "tenant", "--wait", "--timeout", "30", "--server", nats_server.url)
    assert code == 0, err


async def test_a_tcp_health_check_under_gvisor_needs_the_host_network(tiers, nc, programs):
    """gVisor's loopback is its own network stack: no host thread can enter it to probe a port, so
    the check is refused at deploy rather than failing forever; with the host's network it runs."""
    _, gvisor = tiers
    code, error = await control(nc, "DEPLOY", gvisor.node_id, ticker(programs, health={"tcp": 8080}))
    assert code == 400 and "tcp health check of a service under gVisor needs network host" in \
        error["error"]["message"]
    _, info = await control(nc, "INFO", gvisor.node_id)
    assert info["workloads"] == []
