"""A fleet started the plain way (only --server and a state dir each, no fleet keys) heals.

The nodes share the fleet keys through NEX_FLEET (nex.fleet.sharedkeys), so that the
reconciler that follows a SIGKILLed one opens the apps' env and may stop the replicas
its predecessor placed. The app here is applied with `nex apply`, as a user does: signed
with the user's keys, its env sealed to the fleet xkey the lease publishes.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from fleet_fixtures import AppFleet, Cluster, NodeProcess
from helpers import eventually, nex, running_node
from nex.api import subjects
from nex.api.apps import FleetKeysRecord
from nex.api.errors import SealedEnvError
from nex.api.models import NodePing, Resources
from nex.api.records import NodeRecord
from nex.client import NexClient
from nex.connection import ConnectOptions
from nex.fleet.sharedkeys import SharedFleetKeys, copy_key, open_copy, seal_copy
from nex.fleet.store import AppStore
from nex.security.keystore import UserKeys
from nex.security.xkeys import XKey

APP = "heal"
REPLICAS = 3


# -- the sealed copies (pure) ---------------------------------------------------------------------

def _record(keys: UserKeys) -> FleetKeysRecord:
    return FleetKeysRecord(issuer=keys.issuer_public, xkey=keys.xkey.public, created_by="N",
                           created_at="2026-01-01T00:00:00Z")


def test_a_copy_opens_only_for_its_node_and_only_to_the_fleets_keys(tmp_path):
    fleet = UserKeys.load(tmp_path / "fleet", create=True)
    node, other = XKey.create(), XKey.create()
    copy = seal_copy(fleet, node.public)
    opened = open_copy(copy, _record(fleet), node)
    assert (opened.issuer_public, opened.xkey.public) == (fleet.issuer_public, fleet.xkey.public)

    with pytest.raises(SealedEnvError):
        open_copy(copy, _record(fleet), other)  # sealed to another node
    forger = UserKeys.load(tmp_path / "forger", create=True)
    forged = seal_copy(forger, node.public)  # a copy of other keys, sealed by their own xkey
    with pytest.raises(SealedEnvError) as refused:
        open_copy(forged, _record(fleet), node)
    assert "does not open" in str(refused.value)
    with pytest.raises(SealedEnvError) as refused:
        open_copy(forged, _record(forger).model_copy(update={"issuer": fleet.issuer_public}), node)
    assert "other keys" in str(refused.value)


def _registered(node_id: str, xkey: XKey) -> NodeRecord:
    ping = NodePing(node_id=node_id, name=node_id.lower(), version="0", api_version="v1", uptime_s=1.0,
                    state="running", tags={}, xkey=xkey.public, workload_count=0)
    return NodeRecord(node=ping, resources=Resources(cpus=1, memory_bytes=1, memory_available_bytes=1, load_1m=0.0),
                      runtimes=[], workloads=[], seq=1)


async def test_two_nodes_racing_get_one_set_of_keys_and_the_loser_its_copy_from_the_holder(nc, tmp_path):
    xkeys = {"NA": XKey.create(), "NB": XKey.create()}
    nodes = {node_id: SharedFleetKeys(nc, node_id, xkey, lambda n=node_id: UserKeys.load(tmp_path / n, create=True))
             for node_id, xkey in xkeys.items()}
    first, second = await asyncio.gather(nodes["NA"].load(), nodes["NB"].load())
    (winner, keys), = [(n, k) for n, k in zip(nodes, (first, second)) if k is not None]
    loser = "NB" if winner == "NA" else "NA"
    assert await nodes[loser].load() is None, "no copy sealed to it yet: it does not stand"

    assert await nodes[winner].share(keys, [_registered(n, x) for n, x in xkeys.items()]) == 1
    assert await nodes[winner].share(keys, [_registered(n, x) for n, x in xkeys.items()]) == 0, "once each"
    loaded = await nodes[loser].load()
    assert (loaded.issuer_public, loaded.xkey.public) == (keys.issuer_public, keys.xkey.public)

    # The maker of the keys whose own copy never landed takes its own keys again.
    kv = await nc.jetstream().key_value(subjects.FLEET_BUCKET)
    await kv.delete(copy_key(winner))
    again = await SharedFleetKeys(nc, winner, xkeys[winner], lambda: UserKeys.load(tmp_path / winner)).load()
    assert again is not None and again.issuer_public == keys.issuer_public


# -- a fleet of three, on a cluster ---------------------------------------------------------------

class Fleet(AppFleet):
    def __init__(self, cluster: Cluster, nodes: list[NodeProcess], client: NexClient) -> None:
        super().__init__(cluster, nodes, client, APP)

    async def converged(self, replicas: int = REPLICAS, timeout: float = 20.0,
                        not_on: frozenset[str] = frozenset()) -> dict[str, str]:
        return await super().converged(replicas, timeout, not_on)

    async def status(self) -> dict | None:
        code, out, _ = await nex("app", "status", APP, "--json", "--server", self.cluster.urls)
        return json.loads(out) if code == 0 else None

    async def greeted(self, workload_id: str) -> bool:
        code, out, _ = await nex("logs", workload_id, "--server", self.cluster.urls)
        return code == 0 and "started sealed-hello with 0 args" in out


async def test_a_fleet_with_no_fleet_flags_keeps_an_app_with_env_through_the_reconcilers_death(
        nats_cluster, node_processes, programs, tmp_path: Path):
    nodes = await node_processes(3)
    client = await NexClient.connect(ConnectOptions(servers=nats_cluster.urls_from(0)), timeout=10.0)
    fleet = Fleet(nats_cluster, nodes, client)
    try:
        await eventually(fleet.holder, timeout=15, interval=0.2)
        (tmp_path / "app").mkdir()
        (tmp_path / "app" / "ticker").write_bytes(programs["ticker"].read_bytes())
        app_yaml = tmp_path / "app" / "heal.yaml"
        app_yaml.write_text(json.dumps({"name": APP, "workloads": [{
            "name": "ticker", "type": "native", "artifact": "ticker", "replicas": REPLICAS,
            "placement": {"spread": "zone"},
            "env": {"GREETING": "sealed-hello"}}]}))
        code, _, err = await nex("apply", "-f", str(app_yaml), "--server", nats_cluster.urls)
        assert code == 0, err
        before = await fleet.converged()
        assert len(set(before.values())) == REPLICAS, "one replica on each node (spread over the zones)"

        # The reconciler's node dies, with the replica it runs: the next reconciler, holding the
        # same fleet keys, opens the env again and replaces it.
        holder = fleet.node(await fleet.holder())
        lost = {wid for wid, node_id in before.items() if node_id == holder.node_id}
        await holder.kill()

        async def new_holder() -> str | None:
            current = await fleet.holder()
            return current if current not in (None, holder.node_id) else None
        await eventually(new_holder, timeout=15, interval=0.2)
        after = await fleet.converged(timeout=25, not_on=frozenset({holder.node_id}))
        replacement = set(after) - set(before)
        assert len(replacement) == 1 and not set(after) & lost
        assert set(before) - lost <= set(after), "the survivors' replicas were left alone"
        assert await eventually(lambda: fleet.greeted(replacement.pop()), timeout=10, interval=0.3)

        # Its node comes back: still exactly three replicas, the app's status says so.
        await holder.start()
        back = await fleet.converged(timeout=20)
        assert back == after

        async def stable() -> dict | None:
            view = await fleet.status()
            return view if view and view["running"] == REPLICAS and view["rollout"] == "stable" else None
        view = await eventually(stable, timeout=15, interval=0.5)
        assert view["reconciler"] != holder.node_id

        # Deleting the app stops every replica, those the dead reconciler placed included.
        code, out, err = await nex("app", "delete", APP, "--wait", "--timeout", "30", "--server", nats_cluster.urls)
        assert code == 0, err
        assert out.strip() == f"app '{APP}' is deleted"
        assert await fleet.running() == {}
    finally:
        await client.close()


# -- who stands for the lease ---------------------------------------------------------------------

async def test_a_node_whose_fleet_key_its_fleet_does_not_trust_never_stands_for_the_lease(
        nats_server, tmp_path: Path, caplog):
    user = UserKeys.load(tmp_path / "user", create=True)
    fast = {"registry_interval_s": 0.5, "node_timeout_s": 2.0, "lease_s": 2.0, "reconcile_interval_s": 0.3}
    async with running_node(nats_server, tmp_path / "trusted", "trusted", trusted_issuers=[user.issuer_public],
                            **fast) as trusted:
        assert "does not stand for the reconciler lease: its fleet key" in caplog.text
        async with running_node(nats_server, tmp_path / "dev", "dev", **fast) as dev:
            store = AppStore(trusted.nc)
            lease = await eventually(store.lease, timeout=15, interval=0.2)
            assert lease.holder == dev.node_id, "the node that came first never took the lease"

            code, out, err = await nex("node", "ls", "--server", nats_server.url)
            assert code == 0, err
            header, *rows = out.splitlines()
            column = header.split().index("RECONCILES")
            assert sorted((row.split()[1], row.split()[column]) for row in rows) == [("dev", "yes"), ("trusted", "no")]
