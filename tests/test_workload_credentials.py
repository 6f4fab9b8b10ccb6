"""Per-workload NATS identities on an embedded server in operator (JWT) mode."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
from pathlib import Path

import nkeys
import pytest
from nats.aio.client import Client

from nex.api import natsjwt
from nex.api.models import Lifecycle, Trigger, WorkloadType
from nex.connection import ConnectOptions, connect, flush_subscriptions
from nex.node.config import NodeConfig
from nex.node.node import Node
from nex.runtimes.base import WorkloadSpec

from conftest import sandbox_verdict
from helpers import ARTIFACT_ROOTS, control, eventually, file_artifact


@pytest.fixture
async def auth_node(tmp_path: Path):
    config = NodeConfig(artifact_roots=ARTIFACT_ROOTS, state_dir=tmp_path / "node", name="auth-node", port=0, auth=True,
                        sandbox="none", stop_grace_s=2.0, lameduck_s=0.2)
    node = Node(config)
    await node.start()
    yield node
    await node.shutdown()


async def admin_connection(node: Node, tmp_path: Path) -> Client:
    """A client with the node's own, unrestricted kind of user."""
    creds = tmp_path / "admin.creds"
    creds.write_text(node.embedded_auth.signer.mint("test admin"))
    return await connect(ConnectOptions(servers=[node.server_url], creds=str(creds)), max_reconnect_attempts=0)


@pytest.fixture
async def admin(auth_node: Node, tmp_path: Path):
    nc = await admin_connection(auth_node, tmp_path)
    yield nc
    await nc.close()


def container_env(node: Node, workload_id: str) -> dict[str, str]:
    """The environment a sandboxed workload was given, from its bundle's config.json."""
    config = json.loads((node.oci.bundles_dir / workload_id / "config.json").read_text())
    return dict(item.split("=", 1) for item in config["process"]["env"])


async def container_user(env: dict[str, str], creds: Path) -> Workload:
    """A client connected as the container would be, with the JWT and seed of its environment."""
    creds.write_text(natsjwt.creds_file(env["NATS_JWT"], env["NATS_NKEY_SEED"]))
    client = Workload()
    await client.connect(env["NATS_URL"], str(creds), env["NATS_INBOX_PREFIX"])
    return client


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


class Workload:
    """A client connected with a workload's creds, collecting the server's permission errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Client | None = None

    async def connect(self, url: str, creds: str, inbox_prefix: str) -> Client:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))
        self.nc = await connect(ConnectOptions(servers=[url], creds=creds), max_reconnect_attempts=0,
                                error_cb=on_error, inbox_prefix=inbox_prefix)
        return self.nc

    async def confined(self, node_id: str) -> bool:
        """Whether the server refuses this user the node's control subjects and another namespace."""
        control_subject = f"$NEX.SVC.default.control.PING.{node_id}"
        await self.nc.publish(control_subject, b"{}")
        await self.nc.flush()
        await self.nc.subscribe("nex.other.>")
        await self.nc.flush()
        return await self.violation(control_subject) and await self.violation("nex.other.>")

    async def violation(self, subject: str) -> bool:
        """Whether the server reported a permission violation naming ``subject`` (nats-py lowercases it)."""
        wanted = f'"{subject.lower()}"'
        return bool(await eventually(
            lambda: any("permissions violation" in e and wanted in e for e in self.errors), timeout=3))


async def test_the_embedded_server_requires_credentials(auth_node: Node):
    reader, writer = await asyncio.open_connection(auth_node.embedded.host, auth_node.embedded.port)
    info = json.loads((await asyncio.wait_for(reader.readline(), 5)).decode().removeprefix("INFO "))
    writer.write(b'CONNECT {"verbose":false}\r\nPING\r\n')
    await writer.drain()
    answer = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert info["auth_required"] is True and "nonce" in info
    assert answer.startswith(b"-ERR") and b"Authorization" in answer


async def test_native_workload_gets_scoped_credentials(auth_node: Node, admin, programs):
    code, workload = await control(admin, "DEPLOY", auth_node.node_id, {
        "name": "ticker", "type": "native", "artifact": file_artifact(programs["ticker"]),
        "env": {"NATS_URL": "nats://evil:4222"}})
    assert code is None, workload
    env = environ(workload["pid"])
    assert env["NATS_URL"] == auth_node.server_url, "the node's identity wins over the deploy's env"
    creds = Path(env["NATS_CREDS"])
    assert stat.S_IMODE(creds.stat().st_mode) == 0o400
    assert env["NATS_INBOX_PREFIX"] == f"_INBOX.{workload['id']}"
    claims = natsjwt.decode_claims(creds.read_text().split("\n")[1])
    assert claims["nats"]["type"] == "user" and "$NEX.>" in claims["nats"]["pub"]["deny"]

    client = Workload()
    nc = await client.connect(env["NATS_URL"], str(creds), env["NATS_INBOX_PREFIX"])
    try:
        # Its own app subjects work, requests included (replies come to its own inbox).
        got = asyncio.Queue()
        await nc.subscribe("nex.default.chat", cb=got.put)
        await flush_subscriptions(nc)
        await nc.publish("nex.default.chat", b"hi")
        assert (await asyncio.wait_for(got.get(), 3)).data == b"hi"
        async def echo(msg):
            await msg.respond(msg.data)
        await admin.subscribe("nex.default.echo", cb=echo)
        await flush_subscriptions(admin)  # (a plain flush may overtake the SUB in nats-py 2.16)
        assert (await nc.request("nex.default.echo", b"ping", timeout=3)).data == b"ping"

        assert await client.confined(auth_node.node_id), "the control plane and other namespaces are closed"
        await nc.subscribe("_INBOX.>")
        await nc.flush()
        assert await client.violation("_INBOX.>")
    finally:
        await nc.close()
    code, _ = await control(admin, "UNDEPLOY", workload["id"])
    assert code is None


async def test_trigger_subjects_are_allowed_and_nothing_else(auth_node: Node, admin, tmp_path):
    """The credentials a function with triggers would get, minted by the node's own code."""
    spec = WorkloadSpec(id="W1", name="orders", namespace="shop", type=WorkloadType.NATIVE,
                        lifecycle=Lifecycle.SERVICE, artifact_path=tmp_path / "none", work_dir=tmp_path,
                        triggers=[Trigger(subject="orders.new")])
    env = auth_node.credentials.file_environment(spec, tmp_path / "w1.creds")
    client = Workload()
    nc = await client.connect(env["NATS_URL"], env["NATS_CREDS"], env["NATS_INBOX_PREFIX"])
    try:
        got = asyncio.Queue()
        await nc.subscribe("orders.new", cb=got.put)
        await flush_subscriptions(nc)
        await admin.publish("orders.new", b"order 1")
        assert (await asyncio.wait_for(got.get(), 3)).data == b"order 1"
        await nc.subscribe("nex.default.>")
        await nc.flush()
        assert await client.violation("nex.default.>")
        await nc.publish("orders.other", b"x")
        await nc.flush()
        assert await client.violation("orders.other")
    finally:
        await nc.close()


async def test_a_node_without_auth_gives_workloads_nothing(node: Node, nc, programs):
    code, workload = await control(nc, "DEPLOY", node.node_id, {
        "name": "ticker", "type": "native", "artifact": file_artifact(programs["ticker"])})
    assert code is None, workload
    env = environ(workload["pid"])
    assert not {"NATS_URL", "NATS_CREDS", "NATS_JWT", "NATS_NKEY_SEED"} & env.keys()
    await control(nc, "UNDEPLOY", workload["id"])


def test_jwt_encoding_is_what_nats_expects():
    account = nkeys.from_seed(nkeys.encode_seed(bytes(32), nkeys.PREFIX_BYTE_ACCOUNT))
    token = natsjwt.encode(natsjwt.user_claims("UXXX", "w", natsjwt.Permissions(pub_allow=["a.>"])), account)
    header, payload, signature = token.split(".")
    pad = lambda part: part + "=" * (-len(part) % 4)  # noqa: E731
    assert json.loads(base64.urlsafe_b64decode(pad(header))) == {"typ": "JWT", "alg": "ed25519-nkey"}
    assert account.verify(f"{header}.{payload}".encode(), base64.urlsafe_b64decode(pad(signature)))
    claims = natsjwt.decode_claims(token)
    assert claims["iss"] == account.public_key.decode() and claims["sub"] == "UXXX"
    assert claims["nats"]["pub"] == {"allow": ["a.>"]} and claims["nats"]["version"] == 2
    assert len(claims["jti"]) == 52 and "=" not in token


async def test_sandboxed_workload_gets_jwt_and_seed(tmp_path: Path, programs):
    reason = await sandbox_verdict(tmp_path / "probe")
    if reason is not None:
        pytest.skip(f"this host cannot sandbox: {reason}")
    node = Node(NodeConfig(artifact_roots=ARTIFACT_ROOTS,
                           state_dir=tmp_path / "node", name="auth-oci", port=0, auth=True,
                           sandbox="oci", stop_grace_s=2.0))
    await node.start()
    try:
        admin = await admin_connection(node, tmp_path)
        code, workload = await control(admin, "DEPLOY", node.node_id, {
            "name": "ticker", "type": "native", "artifact": file_artifact(programs["ticker"])})
        assert code is None, workload
        env = container_env(node, workload["id"])
        assert env["NATS_URL"] == node.server_url and "NATS_CREDS" not in env
        client = await container_user(env, tmp_path / "from-env.creds")
        nc = client.nc
        await nc.publish("$NEX.SVC.default.control.PING", b"{}")
        await nc.flush()
        assert await client.violation("$NEX.SVC.default.control.PING")
        await nc.close()
        await control(admin, "UNDEPLOY", workload["id"])
        await admin.close()
    finally:
        await node.shutdown()
