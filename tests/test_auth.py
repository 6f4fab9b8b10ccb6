"""Node and CLI on a nats-server that wants credentials: user/password and nkeys."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import nkeys
import pytest

from nex.natsserver import NatsServer

from helpers import eventually, nex


@pytest.fixture
def user_nkey(tmp_path: Path) -> tuple[str, Path]:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path = tmp_path / "user.nk"
    path.write_bytes(seed)
    return nkeys.from_seed(seed).public_key.decode(), path


@pytest.fixture
async def secured_server(tmp_path: Path, user_nkey):
    public, _ = user_nkey
    config = tmp_path / "server.conf"
    config.write_text(
        "jetstream { store_dir: %s }\n"
        "authorization { users = [ {user: alice, password: s3cret}, {nkey: %s} ] }\n"
        % (json.dumps(str(tmp_path / "js")), public))
    server = NatsServer(store_dir=tmp_path / "js", port=0, jetstream=False, extra_args=["-c", str(config)])
    await server.start()
    yield server
    await server.stop()


@pytest.mark.parametrize("auth", ["password", "nkey"])
async def test_node_and_cli_authenticate(secured_server, tmp_path, user_nkey, auth):
    _, seed_file = user_nkey
    credentials = (["--user", "alice", "--password", "s3cret"] if auth == "password"
                   else ["--nkey", str(seed_file)])
    node = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nex", "node", "up", "--server", secured_server.url, *credentials,
        "--state-dir", str(tmp_path / "node"), "--name", f"secure-{auth}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        async def listed():
            code, out, _ = await nex("node", "ls", "--json", "--server", secured_server.url, *credentials)
            return code == 0 and json.loads(out)
        nodes = await eventually(listed, timeout=20, interval=0.2)
        assert nodes[0]["name"] == f"secure-{auth}"
    finally:
        node.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(node.wait(), 20) == 0


async def test_wrong_password_is_one_clear_line(secured_server):
    code, _, err = await nex("node", "ls", "--server", secured_server.url, "--user", "alice", "--password", "nope")
    assert code == 1 and err.startswith("nex: error: ") and "Traceback" not in err
    assert "authorization" in err.lower()
