"""The image pipeline: references, image configuration, unpacking once per digest, pulling."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from nex.api.errors import BadArtifact, BadRequest, HashMismatch, NotFound
from nex.api.models import WorkloadType
from nex.client import guess_type
from nex.images import ImageConfig, ImageStore, parse_reference, process_for, pull, read_manifest
from nex.images.config import node_architecture
from nex.images.registry import manifest_digest
from nex.images.unpack import make_dirs_inside

from oci_helpers import build_image, registry  # noqa: F401  (a fixture)

MAX_BYTES = 1 << 30  # a node's default max_artifact_bytes


@pytest.fixture(scope="module")
def image(programs, tmp_path_factory):
    return build_image(tmp_path_factory.mktemp("image"), programs["imagemain"],
                       entrypoint=["/bin/imagemain"], cmd=["default"], env={"GREETING": "hi"},
                       workdir="/srv/app")


def test_reference_forms():
    ref = parse_reference("oci://127.0.0.1:5000/team/hello:1.0")
    assert (ref.host, ref.repository, ref.tag, ref.digest) == ("127.0.0.1:5000", "team/hello", "1.0", None)
    assert ref.loopback and ref.docker() == "docker://127.0.0.1:5000/team/hello:1.0"
    assert parse_reference("oci://registry.example.com/hello").tag == "latest"
    assert not parse_reference("oci://registry.example.com/hello").loopback
    assert parse_reference("oci://localhost/x:y").loopback
    assert parse_reference("oci://[::1]:5000/x").loopback
    pinned = parse_reference("oci://r.example/x@sha256:" + "a" * 64)
    assert pinned.tag is None and pinned.docker() == "docker://r.example/x@sha256:" + "a" * 64


@pytest.mark.parametrize("uri", [
    "oci://hello", "oci:///hello:1", "oci://host/Upper:1", "oci://host/x:bad tag", "oci://host/x@sha256:12",
])
def test_invalid_references_are_bad_requests(uri):
    with pytest.raises(BadRequest) as caught:
        parse_reference(uri)
    assert uri in caught.value.message


def test_deploy_argv_replaces_cmd_and_env_overrides_image_env(tmp_path):
    config = ImageConfig(entrypoint=["/bin/app"], cmd=["--default"], env={"A": "image", "B": "image"},
                         working_dir="srv")
    process = process_for(config, tmp_path, argv=[], env={"B": "deploy"}, fixed_env={"NEX_X": "1"})
    assert process.args == ["/bin/app", "--default"]
    assert process.env["A"] == "image" and process.env["B"] == "deploy" and process.env["NEX_X"] == "1"
    assert process.env["PATH"] and process.cwd == "/srv" and (process.uid, process.gid) == (0, 0)
    assert process_for(config, tmp_path, ["--x"], {}, {}).args == ["/bin/app", "--x"]
    with pytest.raises(BadArtifact):
        process_for(ImageConfig(), tmp_path, [], {}, {})


def test_user_names_come_from_the_image(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("root:x:0:\nstaff:x:50:\n")
    run = lambda user: process_for(ImageConfig(cmd=["x"], user=user), tmp_path, [], {}, {})  # noqa: E731
    assert (run("app").uid, run("app").gid, run("app").env["HOME"]) == (1000, 1001, "/home/app")
    assert (run("app:staff").uid, run("app:staff").gid) == (1000, 50)
    assert (run("42").uid, run("42").gid, run("42:7").gid) == (42, 0, 7)
    assert run("").env["HOME"] == "/root"
    with pytest.raises(BadArtifact):
        run("nobody-here")


def test_user_lookup_stays_inside_the_image(tmp_path):
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "etc").symlink_to("/etc")  # the node's /etc, seen from the node
    with pytest.raises(BadArtifact):
        process_for(ImageConfig(cmd=["x"], user="root"), rootfs, [], {}, {})


def test_mkdir_inside_the_rootfs_never_follows_a_symlink(tmp_path):
    rootfs, outside = tmp_path / "rootfs", tmp_path / "outside"
    rootfs.mkdir()
    outside.mkdir()
    (rootfs / "escape").symlink_to(outside)
    make_dirs_inside(rootfs, "/escape/made")
    make_dirs_inside(rootfs, "/srv/app")
    assert not (outside / "made").exists()
    assert (rootfs / "srv" / "app").is_dir()


async def test_a_tarball_is_unpacked_once_per_digest(image, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="nex.images.store")
    tarball = image.tarball(tmp_path / "image.tar")
    store = ImageStore(tmp_path / "images", mount_points=("proc", "tmp"))
    first, *others = await asyncio.gather(*(store.acquire(tarball) for _ in range(3)))
    assert first.digest == image.manifest_digest
    assert all(other.rootfs == first.rootfs for other in others)
    assert os.access(first.rootfs / "bin" / "imagemain", os.X_OK)
    assert (first.rootfs / "srv" / "app").is_dir() and (first.rootfs / "proc").is_dir()
    assert first.config.entrypoint == ["/bin/imagemain"] and first.config.env == {"GREETING": "hi"}
    again = await store.acquire(image.tarball(tmp_path / "copy.tar"))
    assert again.rootfs == first.rootfs
    unpacks = [r for r in caplog.records if r.getMessage().startswith("unpacked image")]
    assert len(unpacks) == 1, "three overlapping deploys and a later one unpack the image once"
    assert [p.name for p in store.directory.iterdir()] == [first.digest.removeprefix("sha256:")]


def test_corrupt_and_foreign_tarballs_are_bad_artifacts(image, tmp_path):
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(os.urandom(4096))
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(image.tarball(tmp_path / "full.tar").read_bytes()[:3000])
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tar:
        tar.add(image.layout / "index.json", arcname="index.json")
    for path in (garbage, truncated, plain):
        with pytest.raises(BadArtifact) as caught:
            read_manifest(path)
        assert "layout" in caught.value.message or "blob" in caught.value.message, caught.value.message


def test_the_client_recognises_an_image_layout_tarball(image, tmp_path):
    assert guess_type(image.tarball(tmp_path / "image.tar")) == WorkloadType.OCI
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tar:
        tar.add(image.layout / "index.json", arcname="index.json")
    with pytest.raises(BadRequest):
        guess_type(plain)


async def test_a_pull_checks_the_manifest_digest(image, registry, tmp_path):  # noqa: F811
    uri = registry.push(image, "hello", "1")
    reference = parse_reference(uri)
    assert await manifest_digest(reference) == image.manifest_digest
    hex_digest = image.manifest_digest.removeprefix("sha256:")

    with pytest.raises(HashMismatch) as wrong:
        await pull(uri, "0" * 64, tmp_path / ("0" * 64), MAX_BYTES)
    assert hex_digest not in wrong.value.message and not (tmp_path / ("0" * 64)).exists()
    with pytest.raises(NotFound) as missing:
        await pull(f"oci://{registry.host}/hello:2", hex_digest, tmp_path / "x", MAX_BYTES)
    assert missing.value.code == 404 and "manifest unknown" in missing.value.message

    with pytest.raises(HashMismatch):
        await pull(f"oci://{registry.host}/hello@{image.manifest_digest}", "1" * 64, tmp_path / "y", MAX_BYTES)
    layout = await pull(f"oci://{registry.host}/hello@{image.manifest_digest}", hex_digest, tmp_path / "z", MAX_BYTES)
    assert read_manifest(layout).digest == image.manifest_digest, "a reference may pin its digest"
    layout = await pull(uri, hex_digest, tmp_path / hex_digest, MAX_BYTES)
    assert read_manifest(layout).digest == image.manifest_digest
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pull-")]
    unpacked = await ImageStore(tmp_path / "images").acquire(layout)
    assert (unpacked.rootfs / "bin" / "imagemain").is_file()


async def test_an_unreachable_registry_is_reported(tmp_path):
    with pytest.raises(NotFound) as caught:
        await pull("oci://127.0.0.1:9/hello:1", "0" * 64, tmp_path / "x", MAX_BYTES)
    assert "connection refused" in caught.value.message


def _with_index(image, directory: Path, platforms: dict[str, str]) -> Path:
    """A copy of ``image``'s layout whose index.json points at a multi-platform index blob."""
    layout = directory / "multi"
    shutil.copytree(image.layout, layout)
    real = json.loads((layout / "index.json").read_text())["manifests"][0]
    entries = [{**real, "annotations": {}, "digest": digest if digest != "real" else real["digest"],
                "platform": {"os": "linux", "architecture": arch}} for arch, digest in platforms.items()]
    blob = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": entries}).encode()
    hex_digest = hashlib.sha256(blob).hexdigest()
    (layout / "blobs" / "sha256" / hex_digest).write_bytes(blob)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": f"sha256:{hex_digest}",
        "size": len(blob)}]}))
    return layout


def test_a_multi_platform_index_gives_this_nodes_image(image, tmp_path):
    other = "s390x" if node_architecture() != "s390x" else "amd64"
    layout = _with_index(image, tmp_path / "a", {other: "sha256:" + "0" * 64, node_architecture(): "real"})
    assert read_manifest(layout).digest == image.manifest_digest
    foreign = _with_index(image, tmp_path / "b", {other: "real"})
    with pytest.raises(BadArtifact) as caught:
        read_manifest(foreign)
    assert f"linux/{node_architecture()}" in caught.value.message


async def test_a_tool_that_ends_before_its_file_limit_is_set_is_not_an_error():
    """The size limit of what a tool writes is set right after it starts; a tool done by then
    (its pid gone from prlimit's view) ran like any other: its exit, not an internal error."""
    from nex.images.tools import run_tool

    results = [await run_tool("true", timeout=5, max_file_bytes=1 << 20) for _ in range(100)]
    assert results == [(0, b"", b"")] * 100
