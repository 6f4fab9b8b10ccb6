"""Attacks on desired state: a keyless client that can write NEX_APPS tries to run, change, replay
or stop apps on real nodes that trust one issuer (issue 13, item 2).

The attacker is a plain nats-py connection with no key: it writes app records with JetStream KV
calls, as anyone with rights on the bucket can. The user signs with their keys (``store.apply``,
``store.delete``, what ``nex apply`` and ``nex app delete`` call).
"""

from __future__ import annotations

import json
import os
import signal
from datetime import datetime, timezone
from pathlib import Path

import nats
import pytest

from helpers import eventually, nex, reconciler_passes, running_node
from nex.api import subjects
from nex.api.apps import AppRecord, AppSpec, RolloutState
from nex.api.models import WorkloadState
from nex.client import NexClient
from nex.fleet.reconciler import fleet_keys
from nex.client.appstatus import app_view
from nex.client.appstore import sign_record
from nex.fleet.store import AppStore
from nex.security.keystore import UserKeys

FLEET = {"registry_interval_s": 0.5, "node_timeout_s": 2.0, "lease_s": 2.0, "reconcile_interval_s": 0.3,
         "stop_grace_s": 1.0, "sandbox": "none"}


@pytest.fixture
def user(tmp_path: Path) -> UserKeys:
    return UserKeys.load(tmp_path / "user", create=True)


@pytest.fixture
async def attacker(nats_server):
    """A plain client with no key and no nex code: raw KV writes into NEX_APPS."""
    nc = await nats.connect(nats_server.url)
    yield nc
    await nc.close()


@pytest.fixture
async def store(nc) -> AppStore:
    apps = AppStore(nc)
    await apps.ensure()
    return apps


@pytest.fixture
async def artifacts(nc, programs) -> dict[str, dict]:
    """The test programs in the Object Store (anyone with JetStream rights can put one there)."""
    client = NexClient(nc, timeout=10.0)
    return {name: (await client.upload_artifact(programs[name], key=name)).model_dump()
            for name in ("ticker", "job")}


@pytest.fixture
async def trusted_node(nats_server, tmp_path: Path, user: UserKeys, store):
    """One node that trusts the user's issuer and the fleet's, and reconciles."""
    fleet = fleet_keys(tmp_path / "fleet")
    async with running_node(nats_server, tmp_path / "node", "trusted", fleet_keys=tmp_path / "fleet",
                            trusted_issuers=[user.issuer_public, fleet.issuer_public], **FLEET) as node:
        yield node


def shop(artifact: dict, replicas: int = 1, argv: list[str] | None = None, **extra) -> AppSpec:
    return AppSpec.model_validate({"name": "shop", "workloads": [{
        "name": "ticker", "type": "native", "artifact": artifact, "replicas": replicas, "argv": argv or [],
        "restart": {"backoff": "200ms"}, **extra}]})


async def put_raw(attacker, key: str, value: bytes) -> None:
    kv = await attacker.jetstream().key_value(subjects.APPS_BUCKET)
    await kv.put(key, value)


async def raw_record(attacker, name: str = "shop") -> dict:
    kv = await attacker.jetstream().key_value(subjects.APPS_BUCKET)
    return json.loads((await kv.get(subjects.app_key("default", name))).value)


async def running(store: AppStore, app: str = "shop") -> dict[str, str]:
    """Replica id → revision of the app's running replicas, as the nodes list them."""
    return {r.id: r.app.revision for node in await store.nodes() for r in node.workloads
            if r.app is not None and r.app.name == app and r.state == WorkloadState.RUNNING}


async def refused(store: AppStore, app: str, words: str):
    status = await store.get_status("default", app)
    return status if status is not None and status.refused is not None and words in status.refused else None


async def signed_and_running(store: AppStore, user: UserKeys, spec: AppSpec, replicas: int = 1) -> dict[str, str]:
    await store.apply(spec, user)
    revision = spec.workloads[0].revision()

    async def up():
        now = await running(store)
        return now if len(now) == replicas and set(now.values()) == {revision} else None
    return await eventually(up, timeout=20)


async def test_an_unsigned_record_is_not_placed_and_is_refused(trusted_node, store, attacker, artifacts, nc, user):
    events = await nc.subscribe(subjects.events("default", "app_refused"))
    spec = shop(artifacts["ticker"])
    record = AppRecord(spec=spec, version=1, applied_at=datetime.now(timezone.utc),
                       applied_by=user.issuer_public)  # a claim of authorship that nothing checks
    await put_raw(attacker, subjects.app_key("default", "shop"), record.model_dump_json().encode())

    status = await eventually(lambda: refused(store, "shop", "not signed"), timeout=15)
    event = json.loads((await events.next_msg(timeout=5)).data)
    assert event["data"]["app"] == "shop" and "not signed" in event["data"]["reason"]
    await reconciler_passes(trusted_node)
    assert await running(store) == {}
    stored, _ = await store.get("default", "shop")
    view = app_view(stored, await store.nodes(), status)
    assert view.rollout == "refused" and view.applied_by is None  # not the key the record names


async def test_an_edited_artifact_does_not_run_and_the_old_replicas_keep_running(
        trusted_node, store, attacker, artifacts, user):
    before = await signed_and_running(store, user, shop(artifacts["ticker"], replicas=2), replicas=2)
    edited = await raw_record(attacker)
    edited["spec"]["workloads"][0]["artifact"] = artifacts["job"]  # the attacker's binary, same version
    await put_raw(attacker, subjects.app_key("default", "shop"), json.dumps(edited).encode())

    await eventually(lambda: refused(store, "shop", "does not match its signature"), timeout=15)
    await reconciler_passes(trusted_node)
    assert await running(store) == before

    # What runs is still reconciled: a replica that dies is started again, from the signed spec.
    victim = next(iter(before))
    pid = next(w.stats.get("pid") for w in trusted_node.supervisor.table if w.id == victim)
    os.kill(pid, signal.SIGKILL)

    async def restarted():
        now = await running(store)
        return len(now) == 2 and victim not in now and set(now.values()) == set(before.values())
    await eventually(restarted, timeout=20)


async def test_a_record_signed_by_an_untrusted_key_is_refused(trusted_node, store, attacker, artifacts, tmp_path):
    stranger = UserKeys.load(tmp_path / "stranger", create=True)
    record = sign_record(AppRecord(spec=shop(artifacts["ticker"]), version=1,
                                   applied_at=datetime.now(timezone.utc)), stranger)
    await put_raw(attacker, subjects.app_key("default", "shop"), record.model_dump_json().encode())

    status = await eventually(lambda: refused(store, "shop", "does not trust"), timeout=15)
    assert stranger.issuer_public in status.refused
    await reconciler_passes(trusted_node)
    assert await running(store) == {}


async def test_a_replayed_older_signed_version_is_refused(trusted_node, store, attacker, artifacts, user):
    await signed_and_running(store, user, shop(artifacts["ticker"], argv=["v1"]))
    first = await raw_record(attacker)
    second = await signed_and_running(store, user, shop(artifacts["ticker"], argv=["v2"]))
    await put_raw(attacker, subjects.app_key("default", "shop"), json.dumps(first).encode())

    await eventually(lambda: refused(store, "shop", "older than the verified version 2"), timeout=15)
    await reconciler_passes(trusted_node)
    assert await running(store) == second


@pytest.mark.parametrize("how", ["delete", "purge"])
async def test_a_record_that_vanishes_stops_nothing(trusted_node, store, attacker, artifacts, user, nc, how,
                                                    nats_server):
    before = await signed_and_running(store, user, shop(artifacts["ticker"]))
    events = await nc.subscribe(subjects.events("default", "app_refused"))
    kv = await attacker.jetstream().key_value(subjects.APPS_BUCKET)
    await getattr(kv, how)(subjects.app_key("default", "shop"))

    await eventually(lambda: refused(store, "shop", "deleted without a signed tombstone"), timeout=15)
    assert "without a signed tombstone" in json.loads((await events.next_msg(timeout=5)).data)["data"]["reason"]
    await reconciler_passes(trusted_node)
    assert await running(store) == before
    code, out, err = await nex("app", "status", "shop", "--server", nats_server.url)
    assert code == 0, err
    assert "refused" in out and "deleted without a signed tombstone" in out and user.issuer_public in out
    code, out, err = await nex("app", "ls", "--json", "--server", nats_server.url)
    assert code == 0, err
    assert [(app["name"], app["rollout"]) for app in json.loads(out)] == [("shop", "refused")]


async def test_only_a_signed_tombstone_stops_the_app(trusted_node, store, attacker, artifacts, user):
    before = await signed_and_running(store, user, shop(artifacts["ticker"]))
    forged = await raw_record(attacker)
    forged.update(version=forged["version"] + 1, deleted=True)
    forged.pop("token")
    await put_raw(attacker, subjects.app_key("default", "shop"), json.dumps(forged).encode())
    await eventually(lambda: refused(store, "shop", "not signed"), timeout=15)
    await reconciler_passes(trusted_node)
    assert await running(store) == before

    await store.delete("default", "shop", user)

    async def stopped():
        return await running(store) == {} and await store.get_status("default", "shop") is None
    await eventually(stopped, timeout=20)


async def test_a_rollback_restores_the_previous_spec_without_a_new_signature(trusted_node, store, artifacts, user):
    update = {"max_surge": 1, "max_unavailable": 0}
    good = shop(artifacts["ticker"], update=update)
    before = await signed_and_running(store, user, good)
    bad = AppSpec.model_validate({"name": "shop", "workloads": [{
        "name": "ticker", "type": "native", "artifact": artifacts["job"], "argv": ["1"], "update": update}]})
    applied = await store.apply(bad, user)

    async def rolled_back():
        status = await store.get_status("default", "shop")
        return status if status and status.workloads and status.workloads[0].state == RolloutState.ROLLED_BACK \
            else None
    status = await eventually(rolled_back, timeout=30)
    assert status.refused is None
    record, _ = await store.get("default", "shop")
    assert record.rolled_back and record.token == applied.token and record.spec == good

    # A replica placed after the rollback is deployed from the restored spec, and the node takes it.
    victim = next(iter(before))
    pid = next(w.stats.get("pid") for w in trusted_node.supervisor.table if w.id == victim)
    os.kill(pid, signal.SIGKILL)

    async def replaced():
        now = await running(store)
        return len(now) == 1 and victim not in now and set(now.values()) == {good.workloads[0].revision()}
    await eventually(replaced, timeout=20)


async def test_a_dev_mode_reconciler_cannot_turn_an_unsigned_record_into_a_signed_deploy(
        nats_server, tmp_path, store, attacker, artifacts, user, nc):
    """The reconciler runs on a node in dev mode; the node the app asks for trusts the user's issuer
    and the fleet's. On main, the reconciler signed the unsigned record's deploy with the fleet key."""
    fleet = fleet_keys(tmp_path / "fleet")
    rejected = await nc.subscribe(subjects.events("default", "request_rejected"))
    async with running_node(nats_server, tmp_path / "dev", "dev", fleet_keys=tmp_path / "fleet",
                            tags={"role": "dev"}, **FLEET) as dev, \
            running_node(nats_server, tmp_path / "trusted", "trusted", reconciler=False, tags={"role": "trusted"},
                         trusted_issuers=[user.issuer_public, fleet.issuer_public], **FLEET):
        spec = shop(artifacts["ticker"], placement={"tags": {"role": "trusted"}})
        record = AppRecord(spec=spec, version=1, applied_at=datetime.now(timezone.utc))
        await put_raw(attacker, subjects.app_key("default", "shop"), record.model_dump_json().encode())

        async def refused_with_403():
            event = json.loads((await rejected.next_msg(timeout=5)).data)["data"]
            return event if event["what"]["verb"] == "DEPLOY" and event["why"]["code"] == 403 else None
        event = await eventually(refused_with_403, timeout=20)
        assert event["who"]["claimed_issuer"] is None and "needs a claim" in event["why"]["message"]
        await reconciler_passes(dev)
        assert await running(store) == {}


async def test_a_fleet_signed_deploy_that_strays_from_the_users_signature_is_refused(
        trusted_node, store, artifacts, user, nc, tmp_path):
    """What a rogue reconciler (one holding the fleet key) could send: the node checks the deploy
    against the user's app token, not against the fleet key's word."""
    from nex.api import appsig
    from nex.api.errors import Forbidden
    from nex.api.models import AppRef, DeployRequest

    # Signed by the user but not stored: the reconciler has nothing to place.
    record = sign_record(AppRecord(spec=shop(artifacts["ticker"]), version=1,
                                   applied_at=datetime.now(timezone.utc)), user)
    workload = record.spec.workloads[0]
    app = AppRef(name="shop", revision=workload.revision(), token=record.token, template=appsig.template(workload),
                 digests=appsig.workload_digests(record.spec))
    fleet = NexClient(nc, timeout=10.0, keys=fleet_keys(tmp_path / "fleet"))

    def request(**changes) -> DeployRequest:
        fields = {"name": "ticker", "type": "native", "artifact": workload.artifact, "argv": list(workload.argv),
                  "app": app, **changes}
        return DeployRequest(**fields)

    with pytest.raises(Forbidden) as strayed:
        await fleet.deploy(trusted_node.node_id, request(argv=["--evil"]))
    with pytest.raises(Forbidden) as swapped:
        await fleet.deploy(trusted_node.node_id, request(artifact=artifacts["job"]))
    with pytest.raises(Forbidden) as bare:
        await fleet.deploy(trusted_node.node_id, request(app=None))
    assert "app workload argv" in strayed.value.message and "app workload artifact" in swapped.value.message
    assert "fleet key signs only replicas of signed apps" in bare.value.message
    assert not [w for w in trusted_node.supervisor.table if w.request.name == "ticker"]
    # The same deploy, as signed, runs.
    summary = await fleet.deploy(trusted_node.node_id, request())
    assert summary.app.name == "shop" and summary.app.token is None  # the node keeps name and revision only


async def test_a_fleet_signed_deploy_cannot_drop_the_isolation_the_user_signed(trusted_node, artifacts, user, nc,
                                                                             tmp_path):
    """A rogue reconciler that strips ``isolation: gvisor`` to place a tenant's workload on a weaker
    node: the field is part of what the user signed, and the node refuses the deploy."""
    from nex.api import appsig
    from nex.api.errors import Forbidden
    from nex.api.models import AppRef, DeployRequest

    record = sign_record(AppRecord(spec=shop(artifacts["ticker"], isolation="gvisor"), version=1,
                                   applied_at=datetime.now(timezone.utc)), user)
    workload = record.spec.workloads[0]
    app = AppRef(name="shop", revision=workload.revision(), token=record.token, template=appsig.template(workload),
                 digests=appsig.workload_digests(record.spec))
    fleet = NexClient(nc, timeout=10.0, keys=fleet_keys(tmp_path / "fleet"))
    stripped = DeployRequest(name="ticker", type="native", artifact=workload.artifact, app=app)
    with pytest.raises(Forbidden) as caught:
        await fleet.deploy(trusted_node.node_id, stripped)
    assert "app workload isolation" in caught.value.message
    assert not [w for w in trusted_node.supervisor.table if w.request.name == "ticker"]


async def test_a_signed_app_with_sealed_env_runs_on_a_node_that_trusts_its_issuer(trusted_node, store, artifacts,
                                                                                  user, nc):
    from nex.security.xkeys import seal_env

    lease = await eventually(store.lease, timeout=10)
    logs = await nc.subscribe(subjects.logs_filter("default"))
    sealed = seal_env({"GREETING": "signed-and-sealed"}, user.xkey, lease.fleet_xkey)
    await store.apply(shop(artifacts["ticker"], sealed_env=sealed, sender_xkey=user.xkey.public,
                           env_keys=["GREETING"]), user)

    async def greeted():
        return b"started signed-and-sealed" in (await logs.next_msg(timeout=10)).data
    await eventually(greeted, timeout=20)


async def test_a_refused_record_with_nothing_verified_stops_nothing(nats_server, tmp_path, store, artifacts, user):
    """An unsigned app placed while the fleet was in dev mode keeps running on its node when a
    reconciler that trusts issuers takes over and refuses its record."""
    fleet = fleet_keys(tmp_path / "fleet")
    async with running_node(nats_server, tmp_path / "worker", "worker", reconciler=False, tags={"role": "worker"},
                            **FLEET):
        async with running_node(nats_server, tmp_path / "dev", "dev", fleet_keys=tmp_path / "fleet", **FLEET):
            before = await signed_and_running(store, None, shop(artifacts["ticker"],
                                                                placement={"tags": {"role": "worker"}}))
        async with running_node(nats_server, tmp_path / "trusted", "trusted", fleet_keys=tmp_path / "fleet",
                                trusted_issuers=[user.issuer_public, fleet.issuer_public], **FLEET) as node:
            await eventually(lambda: refused(store, "shop", "not signed"), timeout=15)
            await reconciler_passes(node)
            assert await running(store) == before
