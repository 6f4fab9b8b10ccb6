"""Attacks through artifacts, by a keyless plain nats-py client against real nodes (issue 13, item 1).

Each test is an attack that worked on the node before ``artifact_roots``: a ``file://``
artifact read any file the node could read, a wrong sha256 was answered with the
right one, a key deployed as JavaScript came back in the error, the cache handed
its copies to every user of the host, and a large file was read whole into memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import nats
import nats.js.errors
import pytest

from nex.api import subjects
from nex.client import NexClient
from nex.fleet.store import AppStore
from nex.node.config import NodeConfig
from nex.node.node import Node

from conftest import sandbox_verdict
from helpers import (ARTIFACT_ROOTS, collect, control, eventually, file_artifact, running_node, start_node,
                     wait_for_node)

API_KEY = "sk_live_7f3a9c2e1b"


@pytest.fixture
async def attacker(nats_server):
    """A plain nats-py client with no key and no credentials."""
    client = await nats.connect(nats_server.url, max_reconnect_attempts=0)
    yield client
    await client.close()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def js_deploy(uri: str, sha256: str, name: str = "leak") -> dict:
    return {"name": name, "type": "javascript", "artifact": {"uri": uri, "sha256": sha256},
            "triggers": [{"subject": f"{name}.fn"}]}


def cached(state_dir: Path) -> list[str]:
    """What the node's artifact cache holds, partial downloads included."""
    directory = state_dir / "artifacts"
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def assert_tells_nothing(text: str, secret: Path) -> None:
    """Neither the file's sha256 nor any line of it is in ``text``."""
    assert sha256_of(secret) not in text
    for line in filter(None, secret.read_text().splitlines()):
        assert line.strip() not in text and line.split("=", 1)[-1].strip() not in text


# -- file:// reads only the operator's artifact roots -----------------------------------------------

async def test_the_nodes_keys_and_an_env_file_cannot_be_deployed(nats_server, attacker, tmp_path):
    """The node's xkey and identity, the fleet's issuer seed and a .env file next to the node:
    with no artifact root, every file:// is refused, whatever sha256 is given (the oracle's
    answer included), and the refusal says how to deploy instead."""
    env_file = tmp_path / "app.env"
    env_file.write_text(f"API_KEY={API_KEY}\n")
    events = await collect(attacker, subjects.events_filter())
    async with running_node(nats_server, tmp_path / "victim", "victim", artifact_roots=[]) as node:
        secrets = [node.state_dir / "node.xk", node.state_dir / "node.nk", node.state_dir / "fleet" / "issuer.nk",
                   env_file]
        replies = []
        for secret in secrets:
            for sha256 in ("0" * 64, sha256_of(secret)):  # a guess, then what the oracle used to tell
                replies.append(await control(attacker, "DEPLOY", node.node_id,
                                             js_deploy(f"file://{secret}", sha256)))
        await attacker.flush()
        assert cached(node.state_dir) == []
    for code, body in replies:
        message = body["error"]["message"]
        assert code == 403, body
        assert "--artifact-root" in message and "Object Store" in message and "nex devrun" in message
    published = "\n".join(msg.data.decode() for msg in events)
    for secret in secrets:
        assert_tells_nothing(json.dumps([body for _, body in replies]), secret)
        assert_tells_nothing(published, secret)


async def test_a_path_that_leaves_the_root_is_refused(nats_server, attacker, tmp_path):
    """``..``, a symlink to a file and a symlink to a directory outside the root: all refused,
    with the same answer whether the target exists or not; a file inside the root runs."""
    root = tmp_path / "root"
    root.mkdir()
    env_file = tmp_path / "app.env"
    env_file.write_text(f"API_KEY={API_KEY}\n")
    (root / "config.js").symlink_to(env_file)
    (root / "up").symlink_to(tmp_path)
    good = root / "hello.js"
    good.write_text("(subject, payload) => 'hello'\n")
    sha256 = sha256_of(env_file)
    escapes = [f"file://{root}/../app.env", f"file://{root}/config.js", f"file://{root}/up/app.env",
               f"file://{root}/up/missing.env", f"file://{tmp_path}/rootless/../app.env"]
    async with running_node(nats_server, tmp_path / "victim", "victim", artifact_roots=[root]) as node:
        replies = [await control(attacker, "DEPLOY", node.node_id, js_deploy(uri, sha256)) for uri in escapes]
        leftovers = cached(node.state_dir)
        code, workload = await control(attacker, "DEPLOY", node.node_id,
                                       js_deploy(f"file://{good}", sha256_of(good), "hello"))
        assert code is None, workload
        answer = await attacker.request("hello.fn", b"", timeout=5)
    assert answer.data == b"hello"
    assert leftovers == []
    for (code, body), uri in zip(replies, escapes):
        assert code == 403 and body["error"]["message"].startswith(f"artifact {uri} is outside every artifact root")
        assert_tells_nothing(json.dumps(body), env_file)


async def test_a_wrong_sha256_is_refused_without_the_right_one(nats_server, attacker, tmp_path, caplog):
    """Inside a root too: the reply, the events and the node's log never state the file's sha256."""
    root = tmp_path / "root"
    root.mkdir()
    env_file = root / "app.env"
    env_file.write_text(f"API_KEY={API_KEY}\n")
    events = await collect(attacker, subjects.events_filter())
    caplog.set_level(logging.DEBUG)
    async with running_node(nats_server, tmp_path / "victim", "victim", artifact_roots=[root]) as node:
        code, body = await control(attacker, "DEPLOY", node.node_id, js_deploy(f"file://{env_file}", "0" * 64))
        await attacker.flush()
        leftovers = cached(node.state_dir)
    assert code == 400 and body["error"]["message"] == (
        f"the sha256 of file://{env_file} is not {'0' * 64}, the one the deploy request gives")
    assert leftovers == []
    assert_tells_nothing(json.dumps(body), env_file)
    assert_tells_nothing("\n".join(msg.data.decode() for msg in events), env_file)
    assert_tells_nothing(caplog.text, env_file)


async def test_an_app_record_cannot_leak_the_fleet_seed_through_its_status(nats_server, nc, attacker, tmp_path):
    """The chain of the issue: a record written straight into NEX_APPS by a keyless client names
    the fleet's seed as JavaScript; whatever the reconciler makes of it, the app status (which
    anyone may read) states neither the seed nor its hash."""
    async with running_node(nats_server, tmp_path / "victim", "victim", artifact_roots=[],
                            reconcile_interval_s=0.2) as node:
        seed = node.state_dir / "fleet" / "issuer.nk"
        workload = js_deploy(f"file://{seed}", sha256_of(seed))
        record = {"spec": {"name": "leak", "namespace": "default", "workloads": [workload]},
                  "version": 1, "applied_at": "2026-01-01T00:00:00Z"}
        await AppStore(nc).ensure()  # a fleet that has apps already
        apps = await attacker.jetstream().key_value(subjects.APPS_BUCKET)
        await apps.put(subjects.app_key("default", "leak"), json.dumps(record).encode())

        async def status_with_events() -> str | None:
            try:
                entry = await apps.get(subjects.app_status_key("default", "leak"))
            except nats.js.errors.KeyNotFoundError:
                return None
            return entry.value.decode() if json.loads(entry.value).get("events") else None
        status = await eventually(status_with_events, timeout=15)
    assert_tells_nothing(status, seed)


# -- size: streamed through the hash, bounded, never whole in memory --------------------------------

def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the largest resident set the process has had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


async def test_a_large_file_never_sits_in_the_nodes_memory(nats_server, nc, tmp_path):
    """A 256 MiB sparse file (under the default maximum) goes through the hash to disk:
    the node's peak RSS barely moves, and the mismatch leaves nothing in the cache."""
    sparse = tmp_path / "huge.bin"
    with open(sparse, "wb") as f:
        os.truncate(f.fileno(), 256 << 20)
    state = tmp_path / "state"
    process = await start_node("--server", nats_server.url, "--state-dir", str(state), "--name", "big",
                               "--sandbox", "none", "--no-reconciler")
    try:
        ping = await wait_for_node(nc, "big")
        before = peak_rss_bytes(process.pid)
        code, body = await control(nc, "DEPLOY", ping["node_id"], {
            "name": "huge", "type": "native", "artifact": {"uri": f"file://{sparse}", "sha256": "0" * 64}},
            timeout=60)
        after = peak_rss_bytes(process.pid)
    finally:
        process.terminate()
        await process.wait()
    assert after - before < 64 << 20, f"peak RSS grew by {(after - before) >> 20} MiB"
    assert code == 400 and "is not " + "0" * 64 in body["error"]["message"]
    assert cached(state) == []


async def test_an_artifact_over_the_maximum_is_refused_before_it_is_read(nats_server, attacker, tmp_path):
    """With max_artifact_bytes at 1 MiB: a 1 GiB sparse file and a 2 MiB object are refused,
    and the refusal says which setting decides; the cache stays empty."""
    root = tmp_path / "root"
    root.mkdir()
    sparse = root / "huge.bin"
    with open(sparse, "wb") as f:
        os.truncate(f.fileno(), 1 << 30)
    store = await attacker.jetstream().create_object_store("big")
    blob = os.urandom(2 << 20)
    await store.put("blob", blob)
    async with running_node(nats_server, tmp_path / "victim", "victim", artifact_roots=[root],
                            max_artifact_bytes=1 << 20) as node:
        from_file = await control(attacker, "DEPLOY", node.node_id, {
            "name": "huge", "type": "native", "artifact": {"uri": f"file://{sparse}", "sha256": "0" * 64}},
            timeout=30)
        from_object = await control(attacker, "DEPLOY", node.node_id, {
            "name": "blob", "type": "native",
            "artifact": {"uri": "nats://big/blob", "sha256": hashlib.sha256(blob).hexdigest()}})
        leftovers = cached(node.state_dir)
    for (code, body), uri in zip((from_file, from_object), (f"file://{sparse}", "nats://big/blob")):
        assert code == 400 and body["error"]["message"] == (
            f"artifact {uri} is larger than this node's maximum of 1048576 bytes (max_artifact_bytes in its config)")
    assert leftovers == []


async def test_an_object_artifact_streams_to_the_cache(nats_server, attacker, tmp_path, programs):
    """Many chunks, checked as they come: the program runs, and a second deploy uses the cache
    only while the object still holds those bytes."""
    store = await attacker.jetstream().create_object_store("bin")
    data = programs["job"].read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    await store.put("job", data)
    async with running_node(nats_server, tmp_path / "n", "n", artifact_roots=[]) as node:
        body = {"name": "job", "type": "native", "lifecycle": "job", "artifact": {"uri": "nats://bin/job",
                                                                                  "sha256": sha256}}
        code, workload = await control(attacker, "DEPLOY", node.node_id, body)
        assert code is None, workload
        assert cached(node.state_dir) == [sha256]
        assert (node.state_dir / "artifacts" / sha256).read_bytes() == data
        await store.put("job", b"other bytes")
        code, refused = await control(attacker, "DEPLOY", node.node_id, body)
    assert code == 400 and sha256 in refused["error"]["message"]


async def test_devrun_uploads_to_a_node_without_roots(nats_server, nc, tmp_path, programs):
    """nex devrun and nex apply do not need file://: they upload to the Object Store."""
    async with running_node(nats_server, tmp_path / "n", "n", artifact_roots=[]) as node:
        workload = await NexClient(nc).devrun(programs["job"], node_id=node.node_id, lifecycle="job")
        assert workload.artifact.uri.startswith("nats://")
        await eventually(lambda: node.supervisor.table.get(workload.id, "default").state == "stopped", timeout=10)


# -- the state dir keeps its secrets from the host's other users --------------------------------------

@pytest.fixture
def searchable_dir():
    """A directory others may enter, as /var/lib is: pytest's own temp dirs are 0700 and would hide
    the state dir whatever its modes."""
    path = Path(tempfile.mkdtemp(prefix="nex-perm-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def readable_by_nobody(paths: list[Path]) -> list[str]:
    """Those of ``paths`` the user nobody can read (files) or list (directories)."""
    script = 'for p do if [ -d "$p" ]; then ls -- "$p"; else cat -- "$p"; fi >/dev/null 2>&1 && echo "$p"; done; true'
    result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--",
                             "sh", "-c", script, "sh", *map(str, paths)], capture_output=True, text=True, check=True)
    return result.stdout.split()


# What the OCI runtime writes in a bundle: the container's pid and its own messages, no secret.
RUNTIME_FILES = {"init.pid", "runc.log"}


def everything_under(state_dir: Path) -> list[Path]:
    """Every file but the runtime's, and every directory but those of a sandbox's rootfs (its
    /bin and its mount points, which the mapped user must reach)."""
    found = [state_dir]
    for directory, dirs, files in os.walk(state_dir):
        here = Path(directory)
        found += [here / name for name in files if name not in RUNTIME_FILES]
        found += [here / name for name in dirs if "rootfs" not in (here / name).parts]
    return found


async def test_other_users_read_no_secret_and_no_artifact(nats_server, nc, tmp_path, searchable_dir, programs):
    """As the user nobody: no key, no creds, no JetStream file, no cached artifact and no copy of a
    sandboxed program can be read, and no directory listed, while a sandboxed workload (with
    per-workload credentials) and a plain process run."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is missing")
    reason = await sandbox_verdict(tmp_path / "probe")
    if reason is not None:
        pytest.skip(f"this host cannot sandbox: {reason}")
    sandboxed = Node(NodeConfig(state_dir=searchable_dir / "sandboxed", name="sandboxed", port=0, auth=True,
                                sandbox="oci", stop_grace_s=1.0, artifact_roots=ARTIFACT_ROOTS))
    await sandboxed.start()
    try:
        admin_creds = tmp_path / "admin.creds"
        admin_creds.write_text(sandboxed.embedded_auth.signer.mint("test admin"))
        admin = await nats.connect(sandboxed.server_url, user_credentials=str(admin_creds))
        async with running_node(nats_server, searchable_dir / "plain", "plain") as plain:
            code, in_sandbox = await control(admin, "DEPLOY", sandboxed.node_id, {
                "name": "ticker", "type": "native", "artifact": file_artifact(programs["ticker"])})
            assert code is None, in_sandbox
            code, in_process = await control(nc, "DEPLOY", plain.node_id, {
                "name": "ticker", "type": "native", "artifact": file_artifact(programs["ticker"])})
            assert code is None, in_process
            for node, workload in ((sandboxed, in_sandbox), (plain, in_process)):
                await eventually(lambda: node.supervisor.table.get(workload["id"], "default").state == "running")
            sha256 = file_artifact(programs["ticker"])["sha256"]
            paths = everything_under(sandboxed.state_dir) + everything_under(plain.state_dir)
            assert {sandboxed.state_dir / "node.xk", sandboxed.state_dir / "node.nk",
                    sandboxed.state_dir / "fleet" / "issuer.nk", sandboxed.state_dir / "artifacts" / sha256,
                    plain.state_dir / "artifacts" / sha256} <= set(paths)
            nats_dir = sandboxed.state_dir / "nats"
            assert any(p.suffix == ".creds" or p.name.endswith(".nk") for p in nats_dir.rglob("*"))
            assert any(p.name == "ticker" and "rootfs" in p.parts for p in paths), "the sandbox's copy is looked at"
            leaked = readable_by_nobody(paths)
            for node, workload in ((sandboxed, in_sandbox), (plain, in_process)):
                assert node.supervisor.table.get(workload["id"], "default").state == "running"
        await admin.close()
    finally:
        await sandboxed.shutdown()
    assert leaked == []
