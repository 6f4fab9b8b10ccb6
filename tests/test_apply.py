"""Desired state: app files, the app store in JetStream KV, the status view, and
`nex apply` / `nex app ls|status|delete` driven as a user would, on a real nats-server."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError

from helpers import ARTIFACT_ROOTS, collect, eventually, nex
from nex.api import subjects
from nex.api.apps import AppRecord, AppSpec, AppStatus, ReconcilerLease, RolloutState, WorkloadRollout
from nex.api.errors import AppNotFound, Conflict, Forbidden, Unavailable
from nex.api.models import (
    AppRef, Health, Lifecycle, NodePing, NodeState, Resources, WorkloadState, WorkloadType,
)
from nex.api.records import NodeRecord, ReplicaRecord
from nex.client import NexClient
from nex.connection import ConnectOptions, connect
from nex.client.appfile import AppFileError, build_spec, parse_app_file
from nex.client.appstatus import app_change, app_view
from nex.fleet.store import AppStore
from nex.natsserver import NatsServer
from nex.security.keystore import UserKeys
from nex.security.xkeys import XKey, open_env

SHOP_YAML = """\
name: shop
namespace: default
workloads:
  - name: ticker
    type: native
    artifact: nats://NEXCLIFILES/ticker
    replicas: 3
    placement: {tags: {zone: a}, spread: zone}
    restart: {policy: on-failure, max_retries: 5, backoff: 1s}
    health: {tcp: 8080}
    update: {max_unavailable: 1, max_surge: 1}
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def app_file(tmp_path: Path, workloads: list[dict], name: str = "shop", suffix: str = ".json",
             **extra: object) -> Path:
    return write(tmp_path / f"{name}{suffix}", json.dumps({"name": name, "workloads": workloads, **extra}))


def error_of(call) -> AppFileError:
    try:
        call()
    except AppFileError as exc:
        return exc
    raise AssertionError("no AppFileError")


# -- parsing (pure) -------------------------------------------------------------------


def test_the_issue_example_parses(tmp_path):
    parsed = parse_app_file(write(tmp_path / "app.yaml", SHOP_YAML), "default")
    assert parsed.namespace == "default" and parsed.app.name == "shop"
    ticker = parsed.app.workloads[0]
    assert ticker.artifact.uri == "nats://NEXCLIFILES/ticker" and ticker.artifact.sha256 is None
    assert ticker.replicas == 3 and ticker.lifecycle == Lifecycle.SERVICE
    assert ticker.placement.tags == {"zone": "a"} and ticker.placement.spread == "zone"
    assert ticker.restart.backoff == 1.0 and ticker.restart.max_retries == 5
    assert ticker.health.tcp == 8080
    assert ticker.update.max_unavailable == 1 and ticker.update.max_surge == 1


def test_json_files_mapping_artifacts_string_triggers_and_durations(tmp_path):
    sha = "ab" * 32
    path = app_file(tmp_path, [{
        "name": "hello", "type": "javascript",
        "artifact": {"uri": "file:///srv/hello.js", "sha256": f"sha256:{sha.upper()}"},
        "triggers": ["demo.hello", {"subject": "demo.hi", "queue": "q"}],
        "restart": {"backoff": "500ms", "max_backoff": "2m"}, "update": {"health_deadline": 90},
    }])
    hello = parse_app_file(path, "dev").app.workloads[0]
    assert hello.artifact.sha256 == sha
    assert [(t.subject, t.queue) for t in hello.triggers] == [("demo.hello", None), ("demo.hi", "q")]
    assert hello.lifecycle == Lifecycle.FUNCTION
    assert (hello.restart.backoff, hello.restart.max_backoff, hello.update.health_deadline) == (0.5, 120.0, 90.0)
    assert parse_app_file(path, "dev").namespace == "dev"  # the file names none: the CLI's


@pytest.mark.parametrize("mutate, expected", [
    (lambda w: w["restart"].update(backoff="1x"), "workloads[0].restart.backoff: invalid duration '1x'"),
    (lambda w: w.update(replicas=-1), "workloads[0].replicas: Input should be greater than or equal to 0"),
    (lambda w: w.update(colour="blue"), "workloads[0].colour: unknown field"),
    (lambda w: w.update(artifact={"uri": "./t", "sha256": "nope"}),
     "workloads[0].artifact.sha256: 'nope' is not a sha256"),
    (lambda w: w.update(artifact="http://x/y"), "workloads[0].artifact.uri: unknown scheme"),
    (lambda w: w.update(artifact="nats://NEXCLIFILES"), "workloads[0].artifact.uri: artifact uri 'nats://NEXCLIFILES' "
                                                        "is not of the form nats://BUCKET/KEY"),
    (lambda w: w.update(type="oci", artifact="oci://nohost"), "workloads[0].artifact.uri: oci reference"),
    (lambda w: w.update(artifact="oci://127.0.0.1:5000/hello:1"), "workloads[0]: an oci:// artifact is an image"),
    (lambda w: w.update(health={"tcp": 1, "nats": "x"}), "workloads[0].health: a health check is tcp or nats"),
    (lambda w: w.update(env={"A=B": "c"}), "workloads[0].env: invalid environment variable name 'A=B'"),
    (lambda w: w.update(triggers=["$NEX.SVC.x"]), "workloads[0].triggers[0].subject: trigger subject"),
    (lambda w: w.update(isolation="vm"), "workloads[0].isolation: Input should be 'process', 'container' or 'gvisor'"),
    (lambda w: w.update(type="javascript", artifact="./f.js", triggers=["f"], isolation="gvisor"),
     "workloads[0]: isolation applies to services and jobs"),
])
def test_a_bad_field_is_named_with_file_and_workload(tmp_path, mutate, expected):
    workload = {"name": "ticker", "type": "native", "artifact": "./ticker", "restart": {}}
    mutate(workload)
    path = app_file(tmp_path, [workload])
    err = error_of(lambda: parse_app_file(path, "default"))
    assert err.message.startswith(f"{path}: "), err.message
    assert expected in err.message, err.message


def test_file_level_problems(tmp_path):
    assert "line 2" in error_of(lambda: parse_app_file(write(tmp_path / "a.yaml", "name: x\n  bad: [\n"),
                                                       "default")).message
    twice = write(tmp_path / "b.yaml", "name: x\nname: y\nworkloads: []\n")
    assert "key 'name' is given twice" in error_of(lambda: parse_app_file(twice, "default")).message
    assert "not valid JSON" in error_of(lambda: parse_app_file(write(tmp_path / "c.json", "{"), "default")).message
    assert "is a mapping" in error_of(lambda: parse_app_file(write(tmp_path / "d.yaml", "- 1\n"), "default")).message
    missing = error_of(lambda: parse_app_file(tmp_path / "none.yaml", "default"))
    assert "No such file" in missing.message
    empty = app_file(tmp_path, [], name="empty")
    assert "workloads: List should have at least 1 item" in error_of(lambda: parse_app_file(empty, "default")).message
    same = app_file(tmp_path, [{"name": "a", "type": "native", "artifact": "./a"}] * 2, name="same")
    assert "two workloads are named 'a'" in error_of(lambda: parse_app_file(same, "default")).message


def test_a_file_namespace_against_an_explicit_one(tmp_path):
    path = write(tmp_path / "app.yaml", SHOP_YAML)
    assert parse_app_file(path, "prod").namespace == "default"  # -n not given: the file's wins
    err = error_of(lambda: parse_app_file(path, "prod", namespace_given=True))
    assert "namespace: the file says namespace 'default', the command line 'prod'" in err.message
    assert parse_app_file(path, "default", namespace_given=True).namespace == "default"


# -- the store and resolving, on a real server ---------------------------------------


@pytest.fixture
async def client(nc):
    return NexClient(nc, timeout=5.0)


@pytest.fixture
def store(nc):
    return AppStore(nc, timeout=5.0)


async def test_a_local_artifact_is_uploaded_only_when_applied(tmp_path, client, store, nc):
    (tmp_path / "bin").mkdir()
    binary = write(tmp_path / "bin" / "ticker", "#!/bin/sh\necho tick\n")
    sha = hashlib.sha256(binary.read_bytes()).hexdigest()
    parsed = parse_app_file(app_file(tmp_path, [{"name": "ticker", "type": "native", "artifact": "bin/ticker"}]),
                            "default")

    dry = await build_spec(parsed, client, store, None, upload=False)
    assert dry.workloads[0].artifact.uri == f"nats://NEXCLIFILES/{sha}"
    with pytest.raises(BucketNotFoundError):
        await nc.jetstream().object_store(subjects.ARTIFACT_BUCKET)
    spec = await build_spec(parsed, client, store, None)
    assert spec.workloads[0].artifact.model_dump() == {"uri": f"nats://NEXCLIFILES/{sha}", "sha256": sha}
    objects = await nc.jetstream().object_store(subjects.ARTIFACT_BUCKET)
    assert await objects.get(sha) is not None
    assert (await objects.get(sha)).data == binary.read_bytes()


async def test_a_nats_artifact_gets_its_sha256_from_the_object_store(tmp_path, client, store):
    binary = write(tmp_path / "ticker", "ticker bytes")
    sha = hashlib.sha256(b"ticker bytes").hexdigest()
    await client.upload_artifact(binary, key="ticker")
    parsed = parse_app_file(write(tmp_path / "app.yaml", SHOP_YAML), "default")
    spec = await build_spec(parsed, client, store, None)
    assert spec.workloads[0].artifact.sha256 == sha

    wrong = app_file(tmp_path, [{"name": "ticker", "type": "native",
                                 "artifact": {"uri": "nats://NEXCLIFILES/ticker", "sha256": "0" * 64}}])
    with pytest.raises(AppFileError) as caught:
        await build_spec(parse_app_file(wrong, "default"), client, store, None)
    message = caught.value.message
    assert f"workloads[0].artifact: sha256 {'0' * 64} is given, but the object" in message and sha in message

    missing = app_file(tmp_path, [{"name": "ticker", "type": "native", "artifact": "nats://NEXCLIFILES/nope"}])
    with pytest.raises(AppFileError) as caught:
        await build_spec(parse_app_file(missing, "default"), client, store, None)
    assert "workloads[0].artifact: no object 'nope' in bucket 'NEXCLIFILES'" in caught.value.message


async def test_a_bad_artifact_changes_nothing(tmp_path, client, store, nc):
    good = write(tmp_path / "good", "good")
    path = app_file(tmp_path, [
        {"name": "good", "type": "native", "artifact": "good"},
        {"name": "bad", "type": "native", "artifact": "missing/file"},
    ])
    with pytest.raises(AppFileError) as caught:
        await build_spec(parse_app_file(path, "default"), client, store, None)
    assert "workloads[1].artifact: no file 'missing/file'" in caught.value.message
    assert await store.list() == []
    with pytest.raises(BucketNotFoundError):  # not even the good file was uploaded
        await nc.jetstream().object_store(subjects.ARTIFACT_BUCKET)
    assert good.exists()


async def test_file_artifacts_are_hashed_here_or_need_a_sha256(tmp_path, client, store):
    async def artifact_sha256(path: Path) -> str:
        return (await build_spec(parse_app_file(path, "default"), client, store, None)).workloads[0].artifact.sha256

    local = write(tmp_path / "svc", "svc")
    sha = hashlib.sha256(b"svc").hexdigest()
    here = app_file(tmp_path, [{"name": "svc", "type": "native", "artifact": f"file://{local}"}])
    assert await artifact_sha256(here) == sha
    elsewhere = app_file(tmp_path, [{"name": "svc", "type": "native", "artifact": "file:///on/the/nodes"}])
    with pytest.raises(AppFileError) as caught:
        await build_spec(parse_app_file(elsewhere, "default"), client, store, None)
    assert "is not on this machine: give its sha256" in caught.value.message
    given = app_file(tmp_path, [{"name": "svc", "type": "native",
                                 "artifact": {"uri": "file:///on/the/nodes", "sha256": sha}}])
    assert await artifact_sha256(given) == sha
    pinned = app_file(tmp_path, [{"name": "img", "type": "oci",
                                  "artifact": f"oci://127.0.0.1:5000/hello@sha256:{sha}"}])
    assert await artifact_sha256(pinned) == sha


async def put_lease(nc, fleet: XKey) -> None:
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=subjects.LEASES_BUCKET, ttl=60))
    lease = ReconcilerLease(holder="N" * 56, name="node-1", fleet_xkey=fleet.public,
                            acquired_at=datetime.now(timezone.utc))
    await kv.put(subjects.RECONCILER_LEASE_KEY, lease.model_dump_json().encode())


async def test_env_is_sealed_to_the_fleet_key_and_never_stored_in_the_clear(tmp_path, client, store, nc, nex_home):
    write(tmp_path / "ticker", "t")
    path = app_file(tmp_path, [{"name": "ticker", "type": "native", "artifact": "ticker",
                                "env": {"DB_PASSWORD": "hunter2-secret", "MODE": "prod"}}])
    parsed = parse_app_file(path, "default")
    keys = UserKeys.load(create=True)
    with pytest.raises(AppFileError) as caught:
        await build_spec(parsed, client, store, keys)
    assert "workloads[0].env: no reconciler holds the lease" in caught.value.message
    assert await store.list() == []

    fleet = XKey.create()
    await put_lease(nc, fleet)
    record = await store.apply(await build_spec(parsed, client, store, keys), keys)
    stored = (await (await nc.jetstream().key_value(subjects.APPS_BUCKET)).get("app.default.shop")).value
    assert b"hunter2-secret" not in stored and b"prod\"" not in stored
    workload = record.spec.workloads[0]
    assert workload.env_keys == ["DB_PASSWORD", "MODE"] and workload.sender_xkey == keys.xkey.public
    assert open_env(workload.sealed_env, workload.sender_xkey, fleet) == {"DB_PASSWORD": "hunter2-secret",
                                                                          "MODE": "prod"}
    # The same env again keeps the same box: no new revision, no new version.
    again = await store.apply(await build_spec(parsed, client, store, keys), keys)
    assert again.version == 1 and again.spec.workloads[0].revision() == workload.revision()
    changed = app_file(tmp_path, [{"name": "ticker", "type": "native", "artifact": "ticker",
                                   "env": {"DB_PASSWORD": "other", "MODE": "prod"}}])
    third = await store.apply(await build_spec(parse_app_file(changed, "default"), client, store, keys), keys)
    assert third.version == 2 and third.spec.workloads[0].revision() != workload.revision()


def spec_of(replicas: int = 3, argv: list[str] | None = None, name: str = "shop",
            namespace: str = "default") -> AppSpec:
    return AppSpec.model_validate({"name": name, "namespace": namespace, "workloads": [{
        "name": "ticker", "type": "native", "replicas": replicas, "argv": argv or [],
        "artifact": {"uri": "nats://NEXCLIFILES/ticker", "sha256": "ab" * 32}}]})


async def test_apply_versions_list_and_delete(store, tmp_path):
    user = UserKeys.load(tmp_path / "user", create=True)
    assert await store.list() == [] and await store.nodes() == [] and await store.lease() is None
    first = await store.apply(spec_of(), user)
    assert (first.version, first.applied_by, first.previous) == (1, user.issuer_public, None)
    same = await store.apply(spec_of(), user)
    assert same == first  # identical: the stored record, untouched
    scaled = await store.apply(spec_of(replicas=5), user)
    assert scaled.version == 2 and scaled.previous == spec_of() and scaled.token != first.token
    record, revision = await store.get("default", "shop")
    assert record == scaled

    await store.apply(spec_of(name="cart"), None)
    await store.apply(spec_of(namespace="dev"), None)
    assert [(r.spec.namespace, r.spec.name) for r in await store.list()] == [
        ("default", "cart"), ("default", "shop"), ("dev", "shop")]
    assert [r.spec.name for r in await store.list("dev")] == ["shop"]

    # The reconciler's rollback: a compare-and-set on the revision it read.
    rolled = record.model_copy(update={"spec": spec_of(), "previous": None})
    new_revision = await store.replace(rolled, revision)
    with pytest.raises(Conflict):
        await store.replace(rolled, revision)
    assert (await store.get("default", "shop")) == (rolled, new_revision)

    status = AppStatus(name="shop", namespace="default", version=2, reconciled_at=datetime.now(timezone.utc),
                       reconciler="N1", workloads=[WorkloadRollout(name="ticker", revision="abc")])
    await store.put_status(status)
    assert await store.get_status("default", "shop") == status
    tombstone = await store.delete("default", "shop", user)
    assert tombstone.deleted and tombstone.version == 3 and tombstone.token is not None
    with pytest.raises(AppNotFound) as caught:
        await store.get("default", "shop")
    assert caught.value.message == "no app 'shop' in namespace 'default'"
    with pytest.raises(AppNotFound):
        await store.delete("default", "shop")
    assert [r.spec.name for r in await store.list("default")] == ["cart"]
    assert await store.get_status("default", "shop") == status  # until the reconciler clears it
    await store.delete_status("default", "shop")
    assert await store.get_status("default", "shop") is None
    again = await store.apply(spec_of(), None)
    assert again.version == 4 and again.previous is None  # after the tombstone: no older version is new again


async def test_without_jetstream_the_store_says_so(tmp_path):
    server = NatsServer(store_dir=tmp_path / "js", port=0, jetstream=False)
    await server.start()
    try:
        nc = await connect(ConnectOptions(servers=[server.url]), max_reconnect_attempts=0)
        store = AppStore(nc, timeout=2.0)
        for call in (store.list, store.nodes, store.lease, lambda: store.apply(spec_of(), None)):
            with pytest.raises(Unavailable) as caught:
                await call()
            assert caught.value.message == "JetStream is not enabled on this NATS server"
        await nc.close()
    finally:
        await server.stop()


async def test_concurrent_applies_never_lose_a_version(nc):
    stores = [AppStore(nc) for _ in range(5)]
    records = await asyncio.gather(*(s.apply(spec_of(replicas=i + 1), None) for i, s in enumerate(stores)))
    assert sorted(r.version for r in records) == [1, 2, 3, 4, 5]


# -- the view (pure) ------------------------------------------------------------------


def node_record(name: str, replicas: list[ReplicaRecord], state: NodeState = NodeState.RUNNING) -> NodeRecord:
    node_id = (name.upper() + "N" * 56)[:56]
    ping = NodePing(node_id=node_id, name=name, version="0.1.0", api_version="v1", uptime_s=1.0, state=state,
                    tags={}, workload_count=len(replicas))
    return NodeRecord(node=ping, resources=Resources(cpus=2, memory_bytes=1 << 30, memory_available_bytes=1 << 29,
                                                     load_1m=0.1),
                      runtimes=[WorkloadType.NATIVE], workloads=replicas, seq=1)


def replica(id: str, revision: str, state: WorkloadState = WorkloadState.RUNNING, health: Health | None = None,
            name: str = "ticker", app: str = "shop", namespace: str = "default") -> ReplicaRecord:
    return ReplicaRecord(id=id, name=name, namespace=namespace, type=WorkloadType.NATIVE,
                         lifecycle=Lifecycle.SERVICE, state=state, health=health,
                         app=AppRef(name=app, revision=revision), started_at=datetime.now(timezone.utc))


def test_app_view_puts_desired_next_to_what_the_nodes_run():
    spec = AppSpec.model_validate({"name": "shop", "workloads": [
        {"name": "ticker", "type": "native", "replicas": 3, "health": {"tcp": 8080},
         "artifact": {"uri": "nats://NEXCLIFILES/ticker", "sha256": "ab" * 32}},
        {"name": "web", "type": "native", "replicas": 2,
         "artifact": {"uri": "nats://NEXCLIFILES/web", "sha256": "cd" * 32}},
    ]})
    current = spec.workloads[0].revision()
    web = spec.workloads[1].revision()
    record = AppRecord(spec=spec, version=4, applied_at=datetime.now(timezone.utc))
    nodes = [
        node_record("a", [replica("r1", current, health=Health.HEALTHY), replica("w1", web, name="web"),
                          replica("x", current, app="other"), replica("y", current, namespace="dev")]),
        node_record("b", [replica("r2", current, health=Health.UNHEALTHY),
                          replica("r3", "0123456789ab", health=Health.HEALTHY),
                          replica("r4", current, state=WorkloadState.STARTING),
                          replica("gone", "0123456789ab", name="cron")], state=NodeState.LAMEDUCK),
    ]
    status = AppStatus(name="shop", namespace="default", version=4, reconciled_at=datetime.now(timezone.utc),
                       reconciler="N1", workloads=[
                           WorkloadRollout(name="ticker", revision=current, state=RolloutState.ROLLING,
                                           message="replacing 1 of 3", restarts=2)])
    view = app_view(record, nodes, status)
    assert (view.desired, view.running, view.healthy) == (5, 4, 3)
    ticker, webv = view.workloads
    assert (ticker.desired, ticker.running, ticker.healthy, ticker.up_to_date) == (3, 3, 2, 2)
    assert [(r.id, r.current, r.node_name) for r in ticker.replicas] == [
        ("r1", True, "a"), ("r2", True, "b"), ("r4", True, "b"), ("r3", False, "b")]
    assert ticker.replicas[1].node_state == NodeState.LAMEDUCK
    assert (ticker.rollout, ticker.message, ticker.restarts) == (RolloutState.ROLLING, "replacing 1 of 3", 2)
    assert (webv.running, webv.healthy, webv.rollout) == (1, 1, None)  # no check: running is healthy
    assert [r.id for r in view.leftover] == ["gone"]
    assert view.rollout == "pending"  # one workload has no rollout state yet
    # A status about an older version says nothing about this one.
    stale = app_view(record, nodes, status.model_copy(update={"version": 3}))
    assert stale.workloads[0].rollout is None and stale.reconciled_version == 3

    none_running = app_view(record, [], None)
    assert (none_running.desired, none_running.running, none_running.rollout) == (5, 0, "pending")


def test_app_change_says_which_revisions_change():
    before = spec_of(replicas=3)
    assert app_change(None, before, 1).action == "created"
    assert app_change(before, before, 1).action == "unchanged"
    scaled = app_change(before, spec_of(replicas=4), 2)
    assert scaled.action == "updated" and [(c.name, c.change) for c in scaled.workloads] == [("ticker", "scaled")]
    replaced = app_change(before, spec_of(argv=["--fast"]), 2).workloads[0]
    assert replaced.change == "replaced" and replaced.revision_from != replaced.revision_to


# -- the CLI, as a user runs it -------------------------------------------------------


async def test_a_user_applies_lists_inspects_and_deletes_an_app(nats_server, nc, tmp_path):
    url = nats_server.url
    write(tmp_path / "ticker", "ticker v1")
    app_yaml = write(tmp_path / "shop.yaml", SHOP_YAML.replace("nats://NEXCLIFILES/ticker", "./ticker"))
    received = await collect(nc, "$NEX.FEED.default.events.*")
    await nc.flush()

    code, out, err = await nex("apply", "-f", str(app_yaml), "--dry-run", "--server", url)
    assert code == 0, err
    assert out.splitlines()[0] == "app 'shop' in namespace 'default' would be created (version 1)"
    assert await AppStore(nc).list() == []

    code, out, err = await nex("apply", "-f", str(app_yaml), "--json", "--server", url)
    assert code == 0, err
    change = json.loads(out)
    assert (change["action"], change["version"], change["workloads"][0]["change"]) == ("created", 1, "added")
    code, out, err = await nex("--server", url, "apply", "-f", str(app_yaml))
    assert code == 0, err
    assert out.strip() == "app 'shop' in namespace 'default' is unchanged (version 1)"

    write(tmp_path / "ticker", "ticker v2")
    code, out, err = await nex("apply", "-f", str(app_yaml), "--server", url)
    assert code == 0, err
    assert "is updated to version 2" in out and "ticker: replaced (revision" in out

    code, out, err = await nex("app", "ls", "--server", url)
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == ["NAME", "NAMESPACE", "VERSION", "WORKLOADS", "RUNNING", "HEALTHY", "ROLLOUT", "APPLIED"]
    assert row.split()[:7] == ["shop", "default", "2", "ticker", "0/3", "0", "pending"]

    code, out, err = await nex("app", "status", "shop", "--json", "--server", url)
    assert code == 0, err
    view = json.loads(out)
    assert (view["desired"], view["running"], view["version"]) == (3, 0, 2)
    assert view["workloads"][0]["desired"] == 3 and view["workloads"][0]["replicas"] == []
    code, out, err = await nex("app", "status", "shop", "--server", url)
    assert code == 0, err
    assert "0/3 running" in out and "no replica" in out and "not yet" in out

    cart = write(tmp_path / "cart.yaml", "name: cart\nworkloads: [{name: api, type: native, artifact: ticker}]\n")
    code, out, err = await nex("-n", "dev", "apply", "-f", str(cart), "--server", url)
    assert code == 0 and "app 'cart' in namespace 'dev' is created" in out, err
    code, out, err = await nex("app", "ls", "-A", "--json", "--server", url)
    assert code == 0, err
    assert [(a["namespace"], a["name"], a["desired"]) for a in json.loads(out)] == [("default", "shop", 3),
                                                                                  ("dev", "cart", 1)]

    code, out, err = await nex("app", "delete", "shop", "--wait", "--server", url)
    assert code == 0, err
    assert out.strip() == "app 'shop' is deleted"
    code, out, err = await nex("app", "status", "shop", "--server", url)
    assert code == 1 and err.strip() == "nex: error: no app 'shop' in namespace 'default'"
    code, out, err = await nex("app", "ls", "--server", url)
    assert code == 0 and out == "" and "no app in namespace 'default'" in err

    events = [json.loads(msg.data) for msg in received]
    types = [(e["type"].rsplit(".", 1)[1], e["data"].get("version")) for e in events]
    assert types == [("app_applied", 1), ("app_applied", 2), ("app_deleted", 2)]
    assert events[0]["subject"] == "shop" and events[0]["data"]["workloads"] == {"ticker": "added"}


async def test_cli_errors_are_one_line_and_change_nothing(nats_server, nc, tmp_path):
    url = nats_server.url
    bad = write(tmp_path / "app.yaml", SHOP_YAML.replace("backoff: 1s", "backoff: 1x"))
    code, out, err = await nex("apply", "-f", str(bad), "--server", url)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"nex: error: {bad}: workloads[0].restart.backoff: invalid duration '1x'")
    good = write(tmp_path / "good.yaml", SHOP_YAML)
    code, out, err = await nex("apply", "-f", str(good), "-n", "prod", "--server", url)
    assert code == 1 and "the file says namespace 'default', the command line 'prod'" in err
    code, out, err = await nex("apply", "-f", str(good), "--server", url)
    assert code == 1 and "workloads[0].artifact: no Object Store bucket 'NEXCLIFILES'" in err
    code, out, err = await nex("app", "delete", "shop", "--server", url)
    assert code == 1 and err.strip() == "nex: error: no app 'shop' in namespace 'default'"
    assert await AppStore(nc).list() == []


@pytest.fixture
async def reconciling_node(nats_server, tmp_path):
    """A node that also reconciles, with short intervals so the test is quick."""
    from nex.node.config import NodeConfig
    from nex.node.node import Node

    node = Node(NodeConfig(artifact_roots=ARTIFACT_ROOTS,
        server=nats_server.url, state_dir=tmp_path / "node", name="fleet-a", tags={"zone": "a"},
        stop_grace_s=1.0, lameduck_s=0.2, sandbox="none", registry_interval_s=0.5, node_timeout_s=2.0,
        lease_s=2.0, reconcile_interval_s=0.3, fleet_keys=tmp_path / "fleet"))
    await node.start()
    yield node
    await node.shutdown()


async def test_an_applied_app_runs_with_its_sealed_env_and_stops_when_deleted(
        nats_server, nc, tmp_path, programs, reconciling_node):
    url = nats_server.url
    store = AppStore(nc)
    await eventually(store.lease, timeout=15, interval=0.2)  # the node holds the reconciler lease
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "ticker").write_bytes(programs["ticker"].read_bytes())
    app_yaml = write(tmp_path / "app" / "shop.yaml", json.dumps({"name": "shop", "workloads": [{
        "name": "ticker", "type": "native", "artifact": "ticker", "replicas": 2, "argv": ["x"],
        "env": {"GREETING": "sealed-hello"}}]}))
    code, out, err = await nex("apply", "-f", str(app_yaml), "--server", url)
    assert code == 0, err

    async def running():
        code, out, _ = await nex("app", "status", "shop", "--json", "--server", url)
        view = json.loads(out) if code == 0 else None
        return view if view and view["running"] == 2 and view["rollout"] == "stable" else None
    view = await eventually(running, timeout=45, interval=0.5)
    assert view["reconciler"] == reconciling_node.node_id and view["reconciled_version"] == 1
    replicas = view["workloads"][0]["replicas"]
    assert [(r["node_name"], r["state"], r["current"]) for r in replicas] == [("fleet-a", "running", True)] * 2

    async def greeted():
        code, out, _ = await nex("logs", replicas[0]["id"], "--server", url)
        return code == 0 and "started sealed-hello with 1 args" in out
    await eventually(greeted, timeout=15, interval=0.3)

    code, out, err = await nex("app", "delete", "shop", "--wait", "--timeout", "45", "--server", url)
    assert code == 0, err
    assert out.strip() == "app 'shop' is deleted"
    assert all(not r.app for n in await store.nodes() for r in n.workloads if r.state == WorkloadState.RUNNING)


async def test_a_signed_apply_never_signs_a_spec_someone_else_wrote_as_its_previous(store, nc, tmp_path):
    user = UserKeys.load(tmp_path / "user", create=True)
    first = await store.apply(spec_of(), user)
    kv = await nc.jetstream().key_value(subjects.APPS_BUCKET)
    forged = first.model_copy(update={"spec": spec_of(argv=["evil"])})  # an edit by someone without the key
    await kv.put(subjects.app_key("default", "shop"), forged.model_dump_json(exclude_none=True).encode())

    second = await store.apply(spec_of(replicas=5), user)
    assert second.version == 2 and second.previous is None  # the edit is not what a rollback restores
    again = await store.apply(spec_of(replicas=6), user)
    assert again.previous == spec_of(replicas=5)  # a record signed by itself is


async def test_deleting_a_signed_app_without_keys_says_why_and_writes_nothing(store, tmp_path):
    user = UserKeys.load(tmp_path / "user", create=True)
    signed = await store.apply(spec_of(), user)
    with pytest.raises(Forbidden) as caught:
        await store.delete("default", "shop")
    assert f"signed by {user.issuer_public}" in caught.value.message
    assert (await store.get("default", "shop"))[0] == signed
