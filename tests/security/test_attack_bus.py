"""The bus itself (issue 13, item 6): namespace-scoped client credentials, writes only nodes
make, one-to-one names, whole-string validation. Attackers are plain nats-py clients: keyless
on a node without auth, with another namespace's credentials on a node with ``--auth``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path

import pytest
from nats.aio.client import Client

from nex.agent.hostservices import HostError, kv_bucket
from nex.api import natsjwt, subjects
from nex.client import NexClient
from nex.connection import ConnectOptions, connect, flush_subscriptions
from nex.node.config import NodeConfig
from nex.node.node import Node

from helpers import control, eventually, file_artifact, nex

HELLO_JS = """async (subject, payload) => {
  const text = new TextDecoder().decode(payload);
  console.log("hello line " + text);
  return "hi " + text;
}
"""

# Counts its runs in nex.kv("runs"), as tests/functions/jobs.js does, and answers its namespace.
COUNTING_JS = """async (subject, payload) => {
  const runs = nex.kv("runs");
  const count = ((await runs.get("count", "json")) ?? 0) + 1;
  await runs.put("count", count);
  return { runs: count };
}
"""


@pytest.fixture
async def auth_node(tmp_path: Path):
    config = NodeConfig(state_dir=tmp_path / "node", name="bus-node", port=0, auth=True,
                        sandbox="none", stop_grace_s=2.0, lameduck_s=0.2)
    node = Node(config)
    await node.start()
    yield node
    await node.shutdown()


class Tenant:
    """A nats-py client with one namespace's credentials, collecting the server's permission errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Client | None = None

    async def connect(self, url: str, creds: Path) -> Client:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc).lower())
        self.nc = await connect(ConnectOptions(servers=[url], creds=str(creds)), max_reconnect_attempts=0,
                                error_cb=on_error)
        return self.nc

    async def refused(self, subject: str) -> bool:
        """Whether the server reported a permission violation naming ``subject``."""
        wanted = f'"{subject.lower()}"'
        return bool(await eventually(
            lambda: any("permissions violation" in e and wanted in e for e in self.errors), timeout=3))


async def mint(node: Node, tmp_path: Path, namespace: str, *extra: str) -> Path:
    """`nex creds` as the operator runs it on the node's host."""
    path = tmp_path / f"{namespace}.creds"
    code, _, err = await nex("creds", "-n", namespace, "--state-dir", str(node.state_dir), "-s", node.server_url,
                             "-o", str(path), *extra)
    assert code == 0, err
    return path


async def tenant(node: Node, creds: Path) -> Tenant:
    client = Tenant()
    await client.connect(node.server_url, creds)
    return client


# -- namespace clients, on a node with --auth ------------------------------------------------

async def test_a_namespace_client_runs_its_namespace_with_the_real_cli(auth_node: Node, tmp_path: Path):
    from nex.connection import confined_inbox_prefix

    creds = await mint(auth_node, tmp_path, "shop")
    claims = natsjwt.decode_claims(creds.read_text().split("\n")[1])
    assert claims["nats"]["sub"]["allow"][0] == f"_INBOX.{claims['sub']}.>"
    assert confined_inbox_prefix(str(creds)) == f"_INBOX.{claims['sub']}"
    as_shop = ["--creds", str(creds), "-s", auth_node.server_url, "-n", "shop"]
    hello = tmp_path / "hello.js"
    hello.write_text(HELLO_JS)

    code, out, err = await nex(*as_shop, "devrun", str(hello), "--trigger", "nex.shop.hello", "--json")
    assert code == 0, err
    workload = json.loads(out)
    assert workload["namespace"] == "shop"
    code, out, err = await nex(*as_shop, "invoke", "nex.shop.hello", "world")
    assert (code, out.strip()) == (0, "hi world"), err
    code, out, err = await nex(*as_shop, "workload", "ls", "--json")
    assert code == 0 and [w["id"] for w in json.loads(out)] == [workload["id"]], err

    async def logged():
        code, out, _ = await nex(*as_shop, "logs", workload["id"])
        return code == 0 and "hello line world" in out
    assert await eventually(logged, timeout=10, interval=0.3)
    client = await NexClient.connect(ConnectOptions(servers=[auth_node.server_url], creds=str(creds)), "shop")
    try:  # following: the kept line, then a live one
        lines = client.logs(workload["id"], follow=True)
        assert (await asyncio.wait_for(anext(lines), 10)).text == "hello line world"
        assert await client.invoke("nex.shop.hello", b"again") == b"hi again"
        assert (await asyncio.wait_for(anext(lines), 10)).text == "hello line again"
        await lines.aclose()
    finally:
        await client.close()
    code, out, err = await nex(*as_shop, "events", "--json")
    assert code == 0, err
    assert workload["id"] in out and "workload_started" in out, out

    app = tmp_path / "shop.yaml"
    app.write_text("name: greeter\nnamespace: shop\nworkloads:\n  - name: greeter\n    type: javascript\n"
                   "    artifact: ./hello.js\n    triggers: [nex.shop.greet]\n")
    code, _, err = await nex(*as_shop, "apply", "-f", str(app))
    assert code == 0, err
    shop = await tenant(auth_node, creds)
    try:
        apps = await shop.nc.jetstream(timeout=3).key_value(subjects.APPS_BUCKET)
        record = json.loads((await apps.get(subjects.app_key("shop", "greeter"))).value)
    finally:
        await shop.nc.close()
    assert record["spec"]["namespace"] == "shop" and record["version"] == 1


async def test_a_namespace_client_reaches_nothing_of_another_namespace(auth_node: Node, tmp_path: Path):
    shop = await tenant(auth_node, await mint(auth_node, tmp_path, "shop"))
    evil = await tenant(auth_node, await mint(auth_node, tmp_path, "evil"))
    hello = tmp_path / "hello.js"
    hello.write_text(HELLO_JS)
    code, out, err = await nex("--creds", str(tmp_path / "shop.creds"), "-s", auth_node.server_url, "-n", "shop",
                               "devrun", str(hello), "--trigger", "nex.shop.hello", "--json")
    assert code == 0, err
    victim = json.loads(out)["id"]
    try:
        # Its own namespace answers.
        code, ping = await control(evil.nc, "PING", auth_node.node_id, namespace="evil")
        assert code is None and ping["node_id"] == auth_node.node_id

        # Another namespace's control subjects, app subjects and live feeds are closed.
        await evil.nc.publish(subjects.control("shop", "UNDEPLOY", victim), b"{}")
        await evil.nc.publish("nex.shop.hello", b"x")
        await evil.nc.subscribe("nex.shop.>")
        await evil.nc.subscribe(subjects.logs_filter("shop"))
        await evil.nc.subscribe("_INBOX.>")
        await evil.nc.flush()
        for subject in (subjects.control("shop", "UNDEPLOY", victim), "nex.shop.hello", "nex.shop.>",
                        subjects.logs_filter("shop"), "_INBOX.>"):
            assert await evil.refused(subject), subject

        # Kept feeds: a consumer filtered to another namespace is refused; one filtered to its own
        # namespace but asking for another's in the request body too.
        js = evil.nc.jetstream(timeout=2)
        for body_filter in ({"filter_subject": subjects.logs_filter("shop")},
                            {"filter_subject": subjects.logs_filter("evil"),
                             "filter_subjects": [subjects.logs_filter("shop")]}):
            api = f"$JS.API.CONSUMER.CREATE.{subjects.LOGS_STREAM}.peek.{body_filter['filter_subject']}"
            request = {"stream_name": subjects.LOGS_STREAM, "config": {
                "name": "peek", "deliver_policy": "all", "ack_policy": "none", **body_filter}}
            try:
                reply = await evil.nc.request(api, json.dumps(request).encode(), timeout=2)
                answer = json.loads(reply.data)
            except Exception as exc:  # the refused request is never answered
                answer = {"refused": type(exc).__name__}
            assert "error" in answer or "refused" in answer, (body_filter, answer)
        # Reading the victim's artifacts, KV and app records is refused too.
        for stream in (f"OBJ_{subjects.artifact_bucket('shop')}", f"KV_{kv_bucket('shop', 'runs')}"):
            with pytest.raises(Exception):
                await js.stream_info(stream)
        assert await evil.refused(f"$JS.API.STREAM.INFO.KV_{kv_bucket('shop', 'runs')}")
        with pytest.raises(Exception):
            await js.publish(f"$KV.{subjects.APPS_BUCKET}.{subjects.app_key('shop', 'greeter')}", b"{}")
        assert await evil.refused(f"$KV.{subjects.APPS_BUCKET}.{subjects.app_key('shop', 'greeter')}")

        assert not shop.errors
    finally:
        await shop.nc.close()
        await evil.nc.close()


async def shop_function(node: Node, tmp_path: Path, source: str, *trigger: str) -> str:
    """Deploy ``source`` with shop's creds and the real CLI; its workload id."""
    path = tmp_path / "function.js"
    path.write_text(source)
    code, out, err = await nex("--creds", str(tmp_path / "shop.creds"), "-s", node.server_url, "-n", "shop",
                               "devrun", str(path), *trigger, "--json")
    assert code == 0, err
    return json.loads(out)["id"]


async def test_another_namespace_cannot_mark_an_invocation_done(auth_node: Node, tmp_path: Path):
    shop = await tenant(auth_node, await mint(auth_node, tmp_path, "shop"))
    evil = await tenant(auth_node, await mint(auth_node, tmp_path, "evil"))
    await shop_function(auth_node, tmp_path, COUNTING_JS, "--name", "counter", "--async-trigger", "nex.shop.jobs")
    try:
        # The attack: the completion record of shop's key "order-1", written before it ever ran.
        record = f"shop.counter.{base64.urlsafe_b64encode(b'order-1').decode().rstrip('=')}"
        forged = f"$KV.{subjects.DONE_BUCKET}.{record}"
        with pytest.raises(Exception):
            await evil.nc.jetstream(timeout=1).publish(forged, b"1")
        assert await evil.refused(forged)
        # Its own namespace's keys are not its to write either: only nodes write NEX_DONE.
        own = f"$KV.{subjects.DONE_BUCKET}.evil.counter.a2V5"
        with pytest.raises(Exception):
            await evil.nc.jetstream(timeout=1).publish(own, b"1")
        assert await evil.refused(own)

        results = asyncio.Queue()
        await shop.nc.subscribe("nex.shop.results", cb=results.put)
        await flush_subscriptions(shop.nc)
        code, _, err = await nex("--creds", str(tmp_path / "shop.creds"), "-s", auth_node.server_url, "-n", "shop",
                                 "invoke", "--async", "nex.shop.jobs", "go", "--key", "order-1",
                                 "--reply-to", "nex.shop.results")
        assert code == 0, err
        reply = await asyncio.wait_for(results.get(), 15)
        assert json.loads(reply.data) == {"runs": 1}, "the invocation ran: no forged record stopped it"
    finally:
        await shop.nc.close()
        await evil.nc.close()


async def test_no_client_rewrites_the_fleets_memory(auth_node: Node, tmp_path: Path):
    """What keeps the fleet honest lives in KV: the used claim ids (a deleted one could be replayed),
    the shared fleet keys, the reconciler's lease and its last verified app records (a lowered one
    lets an older signed record back in). A namespace client writes, deletes and purges none of them."""
    shop = await tenant(auth_node, await mint(auth_node, tmp_path, "shop"))
    used = await eventually(lambda: auth_node.nc.jetstream().key_value(subjects.CLAIMS_BUCKET), timeout=5)
    await used.put("some-used-claim-id-0001", b"{}")
    try:
        for subject, headers in (
                (f"$KV.{subjects.CLAIMS_BUCKET}.some-used-claim-id-0001", {"KV-Operation": "DEL"}),
                (f"$KV.{subjects.CLAIMS_BUCKET}.some-used-claim-id-0001", {"KV-Operation": "PURGE"}),
                (f"$KV.{subjects.FLEET_BUCKET}.fleet", None),
                (f"$KV.{subjects.FLEET_BUCKET}.node.NSOMEONE", None),
                (f"$KV.{subjects.LEASES_BUCKET}.{subjects.RECONCILER_LEASE_KEY}", None),
                (f"$KV.{subjects.APPS_BUCKET}.{subjects.app_verified_key('shop', 'web')}", {"KV-Operation": "DEL"}),
                (f"$KV.{subjects.APPS_BUCKET}.{subjects.app_status_key('shop', 'web')}", None)):
            with pytest.raises(Exception):
                await shop.nc.jetstream(timeout=1).publish(subject, b"{}", headers=headers)
            assert await shop.refused(subject), subject
        assert (await used.get("some-used-claim-id-0001")).value == b"{}"
    finally:
        await shop.nc.close()


async def test_nobody_but_nodes_writes_the_feeds(auth_node: Node, tmp_path: Path):
    shop = await tenant(auth_node, await mint(auth_node, tmp_path, "shop"))
    evil = await tenant(auth_node, await mint(auth_node, tmp_path, "evil"))
    victim = await shop_function(auth_node, tmp_path, HELLO_JS, "--trigger", "nex.shop.hello")
    try:
        forged = subjects.logs("shop", victim, "stdout")
        await evil.nc.publish(forged, b"forged: transfer approved")
        await evil.nc.publish(subjects.events("shop", "workload_stopped"), b"{}")
        await shop.nc.publish(forged, b"forged by its own tenant")  # the feeds are the node's word, not a client's
        for client, subject in ((evil, forged), (evil, subjects.events("shop", "workload_stopped")), (shop, forged)):
            await client.nc.flush()
            assert await client.refused(subject)

        assert (await shop.nc.request("nex.shop.hello", b"real", timeout=10)).data == b"hi real"
        async def logged():
            code, out, _ = await nex("--creds", str(tmp_path / "shop.creds"), "-s", auth_node.server_url,
                                     "-n", "shop", "logs", victim)
            return out if code == 0 and "hello line real" in out else None
        out = await eventually(logged, timeout=10, interval=0.3)
        assert "forged" not in out
    finally:
        await shop.nc.close()
        await evil.nc.close()


async def test_a_consumer_cannot_deliver_into_another_namespace(auth_node: Node, tmp_path: Path):
    """A push consumer of its own feed, delivering on the victim's trigger: JetStream would publish
    with the server's rights, where the client's own publish is refused."""
    shop = await tenant(auth_node, await mint(auth_node, tmp_path, "shop"))
    evil = await tenant(auth_node, await mint(auth_node, tmp_path, "evil"))
    await shop_function(auth_node, tmp_path, HELLO_JS, "--trigger", "nex.shop.hello")
    try:
        arrived = asyncio.Queue()
        await shop.nc.subscribe("nex.shop.inbox", cb=arrived.put)
        await flush_subscriptions(shop.nc)
        evil_feed = f"{subjects.FEED_PREFIX}.evil.>"
        api = f"$JS.API.CONSUMER.CREATE.{subjects.EVENTS_STREAM}.push.{evil_feed}"
        request = {"stream_name": subjects.EVENTS_STREAM, "config": {
            "name": "push", "deliver_subject": "nex.shop.inbox", "deliver_policy": "all", "ack_policy": "none",
            "filter_subject": evil_feed, "idle_heartbeat": 100_000_000, "flow_control": True}}
        try:
            answer = json.loads((await evil.nc.request(api, json.dumps(request).encode(), timeout=2)).data)
        except Exception as exc:  # refused: never answered
            answer = {"refused": type(exc).__name__}
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(arrived.get(), 1.0)  # a heartbeat would come within 100 ms
        assert "error" in answer or "refused" in answer, answer
        assert await evil.refused(api), "namespace clients create no consumer"
    finally:
        await shop.nc.close()
        await evil.nc.close()


# -- names, on a node without auth: the attacker is any keyless client --------------------------

@pytest.fixture
async def plain_node(nats_server, tmp_path: Path):
    from helpers import running_node
    async with running_node(nats_server, tmp_path / "node", "plain-node") as node:
        yield node


async def test_namespaces_that_spell_alike_get_streams_of_their_own(plain_node: Node, nats_server, tmp_path: Path):
    """Namespace a_b's function c and namespace a's function b_c: one stream NEXFN_a_b_c before."""
    source = tmp_path / "count.js"
    source.write_text(COUNTING_JS)
    attacker = await connect(ConnectOptions(servers=[nats_server.url]))
    try:
        streams = []
        for namespace, name in (("a", "b_c"), ("a_b", "c")):  # the attacker's first, the victim's second
            code, summary = await control(attacker, "DEPLOY", plain_node.node_id, namespace=namespace, timeout=15,
                                          body={"name": name, "namespace": namespace, "type": "javascript",
                                                "artifact": file_artifact(source),
                                                "triggers": [{"subject": f"nex.{namespace}.jobs", "mode": "async"}]})
            assert code is None, summary
            streams.append(subjects.function_stream(namespace, name))
        assert streams[0] != streams[1]
        js = attacker.jetstream()
        for (namespace, name), stream in zip((("a", "b_c"), ("a_b", "c")), streams):
            info = await js.stream_info(stream)
            assert info.config.description == f"nex function {namespace}/{name}"
            ack = await js.publish(f"nex.{namespace}.jobs", b"go", headers={"Nats-Msg-Id": f"{namespace}-1"})
            assert ack.stream == stream

        async def both_ran():
            counts = []
            for namespace in ("a", "a_b"):
                try:
                    kv = await js.key_value(kv_bucket(namespace, "runs"))
                    counts.append(json.loads((await kv.get("count")).value))
                except Exception:  # not run yet: no bucket, no key
                    return False
            return counts == [1, 1]
        assert await eventually(both_ran, timeout=15, interval=0.2)
    finally:
        await attacker.close()


def test_scoped_names_are_one_to_one():
    pairs = [("a_b", "c"), ("a", "b_c"), ("a", "b__c"), ("a_", "_c"), ("a__", "c"), ("1_a", "b"), ("1", "a_b")]
    names = {subjects.function_stream(ns, name) for ns, name in pairs}
    assert len(names) == len(pairs)
    assert subjects.artifact_bucket("a_b") != subjects.artifact_bucket("a") != subjects.artifact_bucket("default")


# -- whole-string validation -----------------------------------------------------------------

def test_validation_matches_the_whole_text():
    from nex.agent.hostservices import _check_bucket, _check_key
    from nex.api.tracecontext import TraceParent
    from nex.images.reference import parse_reference

    assert subjects.is_token("abc") and not subjects.is_token("abc\n") and not subjects.is_token("ab c")
    for check, value in ((_check_bucket, "cart\n"), (_check_key, "key\n")):
        with pytest.raises(HostError) as caught:
            check(value)
        assert caught.value.kind == "invalid"
    assert TraceParent.parse("00-" + "1" * 32 + "-" + "2" * 16 + "-01\n") is not None  # surrounding space: trimmed
    with pytest.raises(Exception):
        parse_reference("oci://registry.example/app:v1\n")


@pytest.mark.parametrize("uri", ["nats://NEXCLIFILES\n/hello.js", "nats://NEXCLIFILES%0A/hello.js",
                                 "nats://NEXCLIFILES/hello.js\n"])
async def test_a_bucket_with_a_newline_is_a_clean_400(plain_node: Node, nats_server, caplog, uri: str):
    attacker = await connect(ConnectOptions(servers=[nats_server.url]))
    try:
        code, body = await control(attacker, "DEPLOY", plain_node.node_id, {
            "name": "newline", "type": "javascript", "artifact": {"uri": uri, "sha256": "0" * 64},
            "triggers": [{"subject": "nex.default.newline"}]})
    finally:
        await attacker.close()
    assert code == 400 and "artifact" in body["error"]["message"], body
    assert "Traceback" not in caught_text(caplog) and "internal" not in body["error"]["message"].lower()
    assert not plain_node.workload_ping("default", None).workloads


def caught_text(caplog) -> str:
    return "\n".join(record.getMessage() + (str(record.exc_info) if record.exc_info else "")
                     for record in caplog.records)


async def test_a_deploy_reads_no_other_namespace_files(auth_node: Node, tmp_path: Path):
    """The node fetches artifacts with its own rights: evil names shop's artifact bucket."""
    await mint(auth_node, tmp_path, "shop")
    evil = await tenant(auth_node, await mint(auth_node, tmp_path, "evil"))
    await shop_function(auth_node, tmp_path, HELLO_JS, "--trigger", "nex.shop.hello")
    sha = hashlib.sha256(HELLO_JS.encode()).hexdigest()
    try:
        for bucket in (subjects.artifact_bucket("shop"), "NEXOBJ_shop_secrets"):
            code, body = await control(evil.nc, "DEPLOY", auth_node.node_id, namespace="evil", timeout=15, body={
                "name": "thief", "namespace": "evil", "type": "javascript",
                "artifact": {"uri": f"nats://{bucket}/{sha}", "sha256": sha},
                "triggers": [{"subject": "nex.evil.thief"}]})
            assert code == 400 and "belongs to namespace 'shop'" in body["error"]["message"], body
    finally:
        await evil.nc.close()


FAILING_JS = """async (subject, payload) => { throw new Error("no " + new TextDecoder().decode(payload)); }
"""


async def test_a_namespace_client_lists_and_replays_its_own_dead_letters(auth_node: Node, tmp_path: Path):
    shop = await tenant(auth_node, await mint(auth_node, tmp_path, "shop"))
    await mint(auth_node, tmp_path, "evil")
    as_shop = ["--creds", str(tmp_path / "shop.creds"), "-s", auth_node.server_url, "-n", "shop"]
    path = tmp_path / "failing.js"
    path.write_text(FAILING_JS)
    code, out, err = await nex(*as_shop, "devrun", str(path), "--name", "failing", "--trigger", "nex.shop.sync",
                               "--json")
    assert code == 0, err
    artifact = json.loads(out)["artifact"]
    try:
        code, body = await control(shop.nc, "DEPLOY", auth_node.node_id, namespace="shop", timeout=15, body={
            "name": "fails", "namespace": "shop", "type": "javascript", "artifact": artifact,
            "triggers": [{"subject": "nex.shop.orders", "mode": "async", "retry": {"max_attempts": 1}}]})
        assert code is None, body
        code, _, err = await nex(*as_shop, "invoke", "--async", "nex.shop.orders", "o-1", "--key", "o-1")
        assert code == 0, err

        async def listed():
            code, out, _ = await nex(*as_shop, "dlq", "ls", "--json")
            return json.loads(out) if code == 0 and json.loads(out) else None
        letters = await eventually(listed, timeout=15, interval=0.3)
        assert [(d["function"], d["key"]) for d in letters] == [("fails", "o-1")]
        code, out, err = await nex("--creds", str(tmp_path / "evil.creds"), "-s", auth_node.server_url, "-n", "evil",
                                   "dlq", "ls", "--json")
        assert code == 0 and json.loads(out) == [], (out, err)
        code, _, err = await nex(*as_shop, "dlq", "replay", str(letters[0]["seq"]))
        assert code == 0, err
    finally:
        await shop.nc.close()


async def test_nex_creds_with_an_external_operator_account_seed(tmp_path: Path):
    """An operator-mode server the user runs: nex creds mints with a signing key of the account."""
    from nex.natsserver import NatsServer
    from test_external_operator import Operator

    operator = Operator(tmp_path)
    server = NatsServer(store_dir=tmp_path / "js", port=0, jetstream=False,
                        extra_args=["-c", str(operator.server_config())])
    await server.start()
    node = Node(NodeConfig(server=server.url, creds=str(operator.creds("node")), state_dir=tmp_path / "node",
                           name="ext-node", sandbox="none", stop_grace_s=2.0))
    await node.start()
    try:
        creds = tmp_path / "shop.creds"
        code, _, err = await nex("creds", "-n", "shop", "--account-seed", str(operator.signing_seed_file()),
                                 "--account", operator.account_public, "-s", server.url,
                                 "--creds", str(operator.creds("admin")), "-o", str(creds))
        assert code == 0, err
        claims = natsjwt.decode_claims(creds.read_text().split("\n")[1])
        assert claims["nats"]["issuer_account"] == operator.account_public
        hello = tmp_path / "hello.js"
        hello.write_text(HELLO_JS)
        as_shop = ["--creds", str(creds), "-s", server.url, "-n", "shop"]
        code, _, err = await nex(*as_shop, "devrun", str(hello), "--trigger", "nex.shop.hello")
        assert code == 0, err
        code, out, err = await nex(*as_shop, "invoke", "nex.shop.hello", "there")
        assert (code, out.strip()) == (0, "hi there"), err
        code, _, err = await nex(*as_shop, "-n", "default", "workload", "ls")
        assert 'permissions violation for publish to "$nex.svc.default.control.wping"' in err.lower(), err
    finally:
        await node.shutdown()
        await server.stop()
