"""OCI container workloads end to end: images built here, a local registry, a real node and runc."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest

from nex.api import subjects
from nex.client import NexClient
from nex.node.config import NodeConfig
from nex.node.node import Node
from nex.sandbox.runner import OciRunner

from helpers import ARTIFACT_ROOTS, collect, control, eventually, file_artifact, nex
from oci_helpers import build_image, registry  # noqa: F401  (a fixture)


def searchable_temp_dir(prefix: str) -> Path:
    # The container's (unprivileged) root must search every directory above a rootfs.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


@pytest.fixture(scope="module")
def oci_runtime():
    state = searchable_temp_dir("nex-oci-probe-")
    try:
        runner, reason = asyncio.run(OciRunner.probe(state))
    finally:
        shutil.rmtree(state, ignore_errors=True)
    if runner is None:
        pytest.skip(f"no working OCI runtime on this host: {reason}")
    return runner.name


@pytest.fixture
async def oci_node(oci_runtime, nats_server, request):
    """A node running containers with runc; parametrized indirectly with ``gvisor``, with runsc."""
    sandbox = getattr(request, "param", "oci")
    state = searchable_temp_dir("nex-oci-node-")
    if sandbox == "gvisor":
        runner, reason = await OciRunner.probe_gvisor(state / "probe")
        if runner is None:
            shutil.rmtree(state, ignore_errors=True)
            pytest.skip(f"gVisor does not run here: {reason}")
    config = NodeConfig(artifact_roots=ARTIFACT_ROOTS,
                        server=nats_server.url, state_dir=state / "node", name="oci-node",
                        stop_grace_s=2.0, lameduck_s=0.2, sandbox=sandbox)
    node = Node(config)
    await node.start()
    yield node
    await node.shutdown()
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def image(programs, tmp_path_factory):
    """A service image: entrypoint, cmd ending in `serve`, env, working dir."""
    return build_image(tmp_path_factory.mktemp("image"), programs["imagemain"],
                       entrypoint=["/bin/imagemain"], cmd=["default", "serve"],
                       env={"GREETING": "hi", "MODE": "image"}, workdir="/srv/app")


@pytest.fixture(scope="module")
def tarball(image, tmp_path_factory) -> Path:
    return image.tarball(tmp_path_factory.mktemp("tarball") / "image.tar")


def lines_of(logs: list, workload_id: str, stream: str = "stdout") -> list[bytes]:
    return [m.data for m in logs if m.subject.endswith(f".{workload_id}.{stream}")]


async def ended(nc, node: Node, names: set[str]) -> dict | None:
    _, info = await control(nc, "INFO", node.node_id)
    workloads = {w["name"]: w for w in info["workloads"] if w["name"] in names}
    if set(workloads) == names and all(w["state"] in ("stopped", "failed") for w in workloads.values()):
        return workloads
    return None


def oci_body(artifact: dict, **extra) -> dict:
    return {"name": "web", "type": "oci", "artifact": artifact, **extra}


@pytest.mark.parametrize("oci_node", ["oci", "gvisor"], indirect=True)
async def test_a_service_from_a_layout_tarball_runs_as_the_image_says(oci_node, nc, tarball):
    logs = await collect(nc, subjects.logs_filter("default"))
    events = await collect(nc, subjects.events_filter("default"))
    code, workload = await control(nc, "DEPLOY", oci_node.node_id, oci_body(
        file_artifact(tarball), env={"MODE": "deploy"}, limits={"memory_mib": 64}), timeout=30)
    assert code is None, workload
    assert workload["state"] == "running" and workload["type"] == "oci" and workload["pid"]
    wid = workload["id"]

    await eventually(lambda: b"tick 2" in lines_of(logs, wid))
    assert lines_of(logs, wid)[:6] == [
        b"cwd /srv/app", b"uid 0 gid 0", b"GREETING hi MODE deploy",
        b"arg /bin/imagemain", b"arg default", b"arg serve",
    ], "the image's entrypoint, cmd, env and working dir; the deploy's env wins"
    assert lines_of(logs, wid, "stderr") == [b"hello from stderr"]

    _, info = await control(nc, "INFO", oci_node.node_id)
    assert "oci" in info["runtimes"]
    code, ping = await control(nc, "WPING", wid)
    assert code is None and ping["workloads"][0]["state"] == "running"
    assert ping["workloads"][0]["usage"]["memory_bytes"] > 0

    code, stopped = await control(nc, "UNDEPLOY", wid)
    assert code is None and stopped["state"] == "stopped"
    assert stopped["exit"]["exit_code"] == 0, "the program exits 0 on SIGTERM"
    assert b"stopping" in lines_of(logs, wid)
    await eventually(lambda: any(m.subject.endswith("workload_stopped") for m in events))


async def test_an_image_is_unpacked_once_for_overlapping_and_later_deploys(oci_node, nc, tarball, caplog):
    caplog.set_level(logging.INFO, logger="nex.images.store")
    logs = await collect(nc, subjects.logs_filter("default"))
    stored = await NexClient(nc).upload_artifact(tarball)
    jobs = [oci_body(stored.model_dump(), name=f"job-{i}", lifecycle="job", argv=["one", str(i)])
            for i in range(2)]
    replies = await asyncio.gather(*(control(nc, "DEPLOY", oci_node.node_id, body, timeout=30) for body in jobs))
    assert [code for code, _ in replies] == [None, None], replies
    code, later = await control(nc, "DEPLOY", oci_node.node_id, oci_body(
        file_artifact(tarball), name="job-2", lifecycle="job", argv=["one", "2"]), timeout=30)
    assert code is None, later

    finished = await eventually(lambda: ended(nc, oci_node, {"job-0", "job-1", "job-2"}), timeout=15)
    for i, (_, workload) in enumerate([*replies, (None, later)]):
        assert finished[f"job-{i}"]["state"] == "stopped" and finished[f"job-{i}"]["exit"]["exit_code"] == 0
        assert lines_of(logs, workload["id"])[3:] == [b"arg /bin/imagemain", b"arg one", f"arg {i}".encode()], \
            "the deploy's argv replaces the image's cmd, after its entrypoint"
    unpacks = [r for r in caplog.records if r.getMessage().startswith("unpacked image")]
    assert len(unpacks) == 1, "three deploys of one image, two at once: one unpack"


async def test_a_registry_reference_is_pulled_by_its_manifest_digest(oci_node, nc, image, registry):  # noqa: F811
    uri = registry.push(image, "team/hello", "1")
    logs = await collect(nc, subjects.logs_filter("default"))
    client = NexClient(nc, timeout=30)
    summary = await client.devrun(uri, lifecycle="job", argv=["pulled"])
    assert summary.type.value == "oci" and summary.name == "hello"
    assert summary.artifact.sha256 == image.manifest_digest.removeprefix("sha256:")
    finished = await eventually(lambda: ended(nc, oci_node, {"hello"}), timeout=15)
    assert finished["hello"]["exit"]["exit_code"] == 0
    assert b"arg pulled" in lines_of(logs, summary.id)

    wrong = {"uri": uri, "sha256": "0" * 64}
    code, refused = await control(nc, "DEPLOY", oci_node.node_id, oci_body(wrong), timeout=30)
    message = refused["error"]["message"]
    assert code == 400 and "0" * 64 in message and summary.artifact.sha256 not in message, "no digest oracle"
    for missing in (f"oci://{registry.host}/team/hello:2", f"oci://{registry.host}/nobody:1"):
        code, reply = await control(nc, "DEPLOY", oci_node.node_id,
                                    oci_body({"uri": missing, "sha256": "1" * 64}), timeout=30)
        message = reply["error"]["message"]
        assert code == 404 and ("manifest unknown" in message or "name unknown" in message), reply
    code, reply = await control(nc, "DEPLOY", oci_node.node_id, {
        "name": "x", "type": "native", "artifact": {"uri": uri, "sha256": "1" * 64}})
    assert code == 400 and "type oci" in reply["error"]["message"]


@pytest.mark.parametrize("oci_node", ["oci", "gvisor"], indirect=True)
async def test_the_image_user_runs_the_process(oci_node, nc, programs, tmp_path):
    image = build_image(tmp_path, programs["imagemain"], entrypoint=["imagemain"], user="app",
                        files={"etc/passwd": "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"})
    logs = await collect(nc, subjects.logs_filter("default"))
    code, workload = await control(nc, "DEPLOY", oci_node.node_id, oci_body(
        file_artifact(image.tarball(tmp_path / "user.tar")), name="as-app", lifecycle="job"), timeout=30)
    assert code is None, workload
    finished = await eventually(lambda: ended(nc, oci_node, {"as-app"}), timeout=15)
    assert finished["as-app"]["exit"]["exit_code"] == 0
    assert lines_of(logs, workload["id"])[:2] == [b"cwd /", b"uid 1000 gid 1001"], \
        "the image's user by name, its program found on the image's PATH"


async def test_a_container_over_its_memory_limit_is_killed(oci_node, nc, programs, tmp_path):
    hog = build_image(tmp_path, programs["probe"], entrypoint=["/bin/imagemain", "hog"])
    code, workload = await control(nc, "DEPLOY", oci_node.node_id, oci_body(
        file_artifact(hog.tarball(tmp_path / "hog.tar")), name="hog", lifecycle="job", argv=["64"],
        limits={"memory_mib": 16}), timeout=30)
    assert code is None, workload
    finished = await eventually(lambda: ended(nc, oci_node, {"hog"}), timeout=15)
    assert finished["hog"]["state"] == "failed" and finished["hog"]["exit"]["oom_killed"] is True


async def test_a_node_without_sandbox_offers_no_containers(nats_server, nc, tmp_path, tarball):
    node = Node(NodeConfig(artifact_roots=ARTIFACT_ROOTS,
                           server=nats_server.url, state_dir=tmp_path / "plain", sandbox="none"))
    await node.start()
    try:
        _, info = await control(nc, "INFO", node.node_id)
        code, reply = await control(nc, "DEPLOY", node.node_id, oci_body(file_artifact(tarball)))
    finally:
        await node.shutdown()
    assert "oci" not in info["runtimes"]
    assert code == 400 and "does not run oci" in reply["error"]["message"]


async def test_broken_tarballs_are_refused(oci_node, nc, tmp_path, tarball):
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(os.urandom(10_000))
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    not_an_image = tmp_path / "files.tar"
    with tarfile.open(not_an_image, "w") as tar:
        tar.add(tarball, arcname="image.tar")
    for path in (garbage, truncated, not_an_image):
        code, reply = await control(nc, "DEPLOY", oci_node.node_id, oci_body(file_artifact(path)), timeout=30)
        assert code == 400, (path.name, reply)
    _, info = await control(nc, "INFO", oci_node.node_id)
    assert info["workloads"] == []


async def test_devrun_takes_a_tarball_or_a_reference(oci_node, nats_server, nc, image, tarball, registry):  # noqa: F811
    url = nats_server.url
    code, out, err = await nex("devrun", str(tarball), "--lifecycle", "job", "--server", url, "--json")
    assert code == 0, err
    assert json.loads(out)["type"] == "oci", "an image layout tarball is recognised"
    uri = registry.push(image, "cli", "v1")
    code, out, err = await nex("devrun", uri, "--type", "oci", "--argv", "x", "--server", url, "--json")
    assert code == 0, err
    workload = json.loads(out)
    assert workload["artifact"] == {"uri": uri, "sha256": image.manifest_digest.removeprefix("sha256:")}
    code, out, err = await nex("devrun", f"oci://{registry.host}/cli:nope", "--server", url)
    assert code != 0 and "manifest unknown" in err


async def test_a_registry_pull_stops_at_the_nodes_maximum_and_leaves_nothing(oci_runtime, nats_server, nc, image,
                                                                              registry):  # noqa: F811
    uri = registry.push(image, "team/big", "1")
    state = searchable_temp_dir("nex-oci-small-")
    node = Node(NodeConfig(server=nats_server.url, state_dir=state / "node", name="small", sandbox="oci",
                           stop_grace_s=1.0, max_artifact_bytes=64 * 1024))
    await node.start()
    try:
        digest = image.manifest_digest.removeprefix("sha256:")
        code, reply = await control(nc, "DEPLOY", node.node_id, oci_body({"uri": uri, "sha256": digest}), timeout=30)
        assert code == 400 and "maximum of 65536 bytes" in reply["error"]["message"], reply
        assert list((node.state_dir / "artifacts").iterdir()) == [], "no partial pull is left behind"
    finally:
        await node.shutdown()
        shutil.rmtree(state, ignore_errors=True)
