"""OCI images built by the tests themselves (umoci), and a local registry (docker-registry).

Import the fixtures into a test module to use them: ``from oci_helpers import registry``.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

REGISTRY_START_S = 10.0


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@dataclass(frozen=True)
class BuiltImage:
    layout: Path  # an OCI image layout directory holding the image under `tag`
    tag: str
    manifest_digest: str  # sha256:<hex>

    def tarball(self, path: Path) -> Path:
        """The layout as an image-layout tarball (what `nex devrun image.tar` takes)."""
        with tarfile.open(path, "w") as tar:
            for child in sorted(self.layout.iterdir()):
                tar.add(child, arcname=child.name)
        return path


def build_image(directory: Path, program: Path, *, tag: str = "test", entrypoint: list[str] | None = None,
                cmd: list[str] | None = None, env: dict[str, str] | None = None,
                workdir: str | None = None, user: str | None = None,
                files: dict[str, str] | None = None,
                prepare_tree: Callable[[Path], None] | None = None) -> BuiltImage:
    """A layout in ``directory`` holding one image: ``program`` at /bin/imagemain, text ``files``;
    ``prepare_tree`` may add to the layer's directory (device nodes, setuid files...) before it is packed."""
    layout = directory / "layout"
    run("umoci", "init", "--layout", str(layout))
    image = f"{layout}:{tag}"
    run("umoci", "new", "--image", image)
    tree = directory / f"tree-{tag}"
    (tree / "bin").mkdir(parents=True, exist_ok=True)
    (tree / "bin" / "imagemain").write_bytes(program.read_bytes())
    (tree / "bin" / "imagemain").chmod(0o755)
    for name, text in (files or {}).items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(text)
    if prepare_tree is not None:
        prepare_tree(tree)
    run("umoci", "insert", "--image", image, str(tree), "/")
    options = []
    for arg in entrypoint or []:
        options += ["--config.entrypoint", arg]
    for arg in cmd or []:
        options += ["--config.cmd", arg]
    for key, value in (env or {}).items():
        options += ["--config.env", f"{key}={value}"]
    if workdir:
        options += ["--config.workingdir", workdir]
    if user:
        options += ["--config.user", user]
    if options:
        run("umoci", "config", "--image", image, *options)
    index = json.loads((layout / "index.json").read_text())
    digest = next(m["digest"] for m in index["manifests"]
                  if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    return BuiltImage(layout=layout, tag=tag, manifest_digest=digest)


def sha256_hex(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Registry:
    host: str  # 127.0.0.1:PORT

    def push(self, image: BuiltImage, repository: str, tag: str) -> str:
        """Push ``image`` as ``repository:tag``; returns the oci:// reference."""
        run("skopeo", "copy", "--insecure-policy", "--quiet", "--dest-tls-verify=false",
            f"oci:{image.layout}:{image.tag}", f"docker://{self.host}/{repository}:{tag}")
        return f"oci://{self.host}/{repository}:{tag}"


def _start_registry(root: Path, port: int) -> subprocess.Popen | None:
    """docker-registry serving ``root`` on ``port``, once it answers; None when another process
    bound the port first (a test running alongside may, between the choice and the bind)."""
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    with open(root / "registry.log", "wb") as log:
        process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + REGISTRY_START_S
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1):
                return process
        except OSError:
            exited = process.poll() is not None
            if exited and "address already in use" in (root / "registry.log").read_text():
                return None
            if exited or time.monotonic() > deadline:
                _stop(process)
                raise RuntimeError(f"docker-registry did not start: {(root / 'registry.log').read_text()}")
            time.sleep(0.05)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A docker-registry on a free loopback port, for the tests of one module."""
    root = tmp_path_factory.mktemp("registry")
    for _ in range(3):
        port = _free_port()
        process = _start_registry(root, port)
        if process is not None:
            break
    else:
        raise RuntimeError("docker-registry found its port taken 3 times")
    try:
        yield Registry(host=f"127.0.0.1:{port}")
    finally:
        _stop(process)
