"""Workload identities where the node does not own the server: an external operator-mode
nats-server, an account signing key, and OCI containers on an authenticated node."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import nkeys
import pytest

from nex.api import natsjwt
from nex.connection import ConnectOptions, connect
from nex.natsserver import NatsServer
from nex.node.config import NodeConfig
from nex.node.node import Node
from nex.security.natsauth import AccountSigner, write_private

from conftest import sandbox_verdict
from helpers import ARTIFACT_ROOTS, control, file_artifact
from oci_helpers import build_image
from test_workload_credentials import Workload, admin_connection, container_env, container_user, environ


def _keys(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


class Operator:
    """An operator, a system account and an app account whose users are signed by a signing key,
    set up the way an operator would with nsc, but in a memory resolver."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.operator = _keys(nkeys.PREFIX_BYTE_OPERATOR)
        self.system = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
        self.account = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
        self.signing_key = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
        self.account_public = self.account.public_key.decode()

    def server_config(self) -> Path:
        system = self.system.public_key.decode()
        operator = natsjwt.encode(natsjwt.operator_claims(self.operator.public_key.decode(), "ops", system),
                                  self.operator)
        accounts = {
            system: natsjwt.encode(natsjwt.account_claims(system, "SYS", jetstream=False), self.operator),
            self.account_public: natsjwt.encode(natsjwt.account_claims(
                self.account_public, "APP", signing_keys=[self.signing_key.public_key.decode()]), self.operator),
        }
        preload = "\n".join(f"  {key}: {json.dumps(token)}" for key, token in accounts.items())
        path = self.dir / "server.conf"
        path.write_text(f"operator: {json.dumps(operator)}\nsystem_account: {system}\n"
                        f"jetstream {{ store_dir: {json.dumps(str(self.dir / 'js'))} }}\n"
                        f"resolver: MEMORY\nresolver_preload: {{\n{preload}\n}}\n")
        return path

    def signer(self) -> AccountSigner:
        return AccountSigner(self.signing_key, self.account_public)

    def creds(self, name: str) -> Path:
        path = self.dir / f"{name}.creds"
        write_private(path, self.signer().mint(name))
        return path

    def signing_seed_file(self) -> Path:
        path = self.dir / "signing.nk"
        write_private(path, self.signing_key.seed.decode())
        return path


@pytest.fixture
async def operator_server(tmp_path: Path):
    operator = Operator(tmp_path)
    server = NatsServer(store_dir=tmp_path / "js", port=0, jetstream=False,
                        extra_args=["-c", str(operator.server_config())])
    await server.start()
    yield operator, server
    await server.stop()


async def test_a_node_on_an_external_operator_server_mints_scoped_users_with_a_signing_key(
        operator_server, tmp_path, programs):
    operator, server = operator_server
    node = Node(NodeConfig(artifact_roots=ARTIFACT_ROOTS,
        server=server.url, creds=str(operator.creds("node")), account_seed=str(operator.signing_seed_file()),
        account=operator.account_public, state_dir=tmp_path / "node", name="ext-node", sandbox="none",
        stop_grace_s=2.0))
    await node.start()
    admin = await connect(ConnectOptions(servers=[server.url], creds=str(operator.creds("admin"))),
                          max_reconnect_attempts=0)
    try:
        code, workload = await control(admin, "DEPLOY", node.node_id, {
            "name": "ticker", "type": "native", "artifact": file_artifact(programs["ticker"])})
        assert code is None, workload
        env = environ(workload["pid"])
        assert env["NATS_URL"] == server.url
        claims = natsjwt.decode_claims(Path(env["NATS_CREDS"]).read_text().split("\n")[1])
        assert claims["iss"] == operator.signing_key.public_key.decode(), "signed by the signing key"
        assert claims["nats"]["issuer_account"] == operator.account_public

        client = Workload()
        nc = await client.connect(env["NATS_URL"], env["NATS_CREDS"], env["NATS_INBOX_PREFIX"])
        try:
            assert nc.is_connected, "the server accepts the user the node minted"
            assert await client.confined(node.node_id), "the control plane and other namespaces are closed"
        finally:
            await nc.close()
        code, _ = await control(admin, "UNDEPLOY", workload["id"])
        assert code is None
    finally:
        await admin.close()
        await node.shutdown()


async def test_an_oci_container_on_an_authenticated_node_gets_its_own_scoped_identity(tmp_path, programs):
    reason = await sandbox_verdict(tmp_path / "probe")
    if reason is not None:
        pytest.skip(f"this host cannot sandbox: {reason}")
    # The container's unprivileged root must search every directory above its rootfs.
    state = Path(tempfile.mkdtemp(prefix="nex-oci-auth-"))
    state.chmod(0o711)
    image = build_image(tmp_path / "image", programs["imagemain"], entrypoint=["/bin/imagemain"],
                        cmd=["serve"])
    tarball = image.tarball(tmp_path / "image.tar")
    node = Node(NodeConfig(artifact_roots=ARTIFACT_ROOTS,
                           state_dir=state / "node", name="auth-oci", port=0, auth=True, sandbox="oci",
                           stop_grace_s=2.0))
    await node.start()
    try:
        admin = await admin_connection(node, tmp_path)
        code, workload = await control(admin, "DEPLOY", node.node_id, {
            "name": "web", "type": "oci", "artifact": file_artifact(tarball)}, timeout=30)
        assert code is None, workload
        env = container_env(node, workload["id"])
        assert env["NATS_URL"] == node.server_url and env["NATS_INBOX_PREFIX"] == f"_INBOX.{workload['id']}"
        client = await container_user(env, tmp_path / "container.creds")
        nc = client.nc
        await nc.publish("$NEX.SVC.default.control.PING", b"{}")
        await nc.flush()
        assert await client.violation("$NEX.SVC.default.control.PING")
        await nc.close()
        code, _ = await control(admin, "UNDEPLOY", workload["id"])
        assert code is None
        await admin.close()
    finally:
        await node.shutdown()
        shutil.rmtree(state, ignore_errors=True)
