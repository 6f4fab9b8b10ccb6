"""Fixtures: real nats-server processes on free loopback ports, real clients."""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nex.connection import ConnectOptions, connect
from nex.natsserver import NatsServer

# The fleet fixtures: a 3-server cluster, a leaf server, nodes as processes (tests/fleet_fixtures.py).
pytest_plugins = ["fleet_fixtures"]


@pytest.fixture(autouse=True)
def nex_home(tmp_path: Path, monkeypatch) -> Path:
    """The user's ~/.nex of this test (the CLI makes keys there): never the real home."""
    home = tmp_path / "nexhome"
    monkeypatch.setenv("NEX_HOME", str(home))
    return home


@pytest.fixture(scope="session", autouse=True)
def artifact_roots(tmp_path_factory) -> list[Path]:
    """The test nodes' artifact roots: the base temp dir (of this xdist worker), which holds
    the built programs and every test's tmp_path, and the JavaScript of tests/functions
    (see helpers.ARTIFACT_ROOTS)."""
    import helpers

    helpers.ARTIFACT_ROOTS[:] = [tmp_path_factory.getbasetemp(), Path(__file__).parent / "functions"]
    return helpers.ARTIFACT_ROOTS


@pytest.fixture(scope="session", autouse=True)
def python_build_cache(tmp_path_factory) -> Path:
    """Where Python functions' builds are kept (NEX_PYTHON_BUILD_CACHE): one directory for the
    run, shared by the xdist workers (the parent of their base temp dirs), so that a source
    is built once per run by whichever test needs it first; each build is about 6 s of CPU."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    cache = shared / "python-builds"
    os.environ["NEX_PYTHON_BUILD_CACHE"] = str(cache)
    return cache


@pytest.fixture
async def nats_server(tmp_path: Path):
    server = NatsServer(store_dir=tmp_path / "jetstream", port=0)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def connect_options(nats_server: NatsServer) -> ConnectOptions:
    return ConnectOptions(servers=[nats_server.url])


@pytest.fixture
async def nc(connect_options: ConnectOptions):
    client = await connect(connect_options, max_reconnect_attempts=0)
    yield client
    await client.close()


PROGRAMS = Path(__file__).parent / "programs"


@pytest.fixture(scope="session")
def programs(tmp_path_factory) -> dict[str, Path]:
    """The C programs under tests/programs, built once as static 64-bit executables."""
    import subprocess

    out = tmp_path_factory.mktemp("programs")
    built = {}
    for source in sorted(PROGRAMS.glob("*.c")):
        binary = out / source.stem
        subprocess.run(["gcc", "-static", "-O1", "-o", str(binary), str(source)], check=True)
        built[source.stem] = binary
    return built


@pytest.fixture(scope="session")
def linked(tmp_path_factory, programs) -> dict[str, Path | None]:
    """tests/programs/ticker.c linked every other way, and other files deployed as native by
    mistake: what a node refuses, or runs with a warning (tests/test_native_refusals.py).

    dynamic, dynamic_nopie: plain gcc (with the dynamic loader as interpreter); static_pie:
    gcc -static-pie (None where this toolchain cannot); shared: a shared library; object: a .o;
    other_arch: the static ticker with e_machine 183 (aarch64), or 62 (x86_64) on an aarch64 host."""
    import subprocess

    out = tmp_path_factory.mktemp("linked")
    source = str(PROGRAMS / "ticker.c")
    builds = {
        "dynamic": ["gcc", "-O1"], "dynamic_nopie": ["gcc", "-O1", "-no-pie"],
        "static_pie": ["gcc", "-O1", "-static-pie"], "shared": ["gcc", "-O1", "-shared", "-fPIC"],
        "object": ["gcc", "-O1", "-c"],
    }
    built: dict[str, Path | None] = {}
    for name, command in builds.items():
        target = out / name
        done = subprocess.run([*command, "-o", str(target), source], capture_output=True)
        if done.returncode != 0 and name != "static_pie":
            raise AssertionError(f"{' '.join(command)}: {done.stderr.decode()}")
        built[name] = target if done.returncode == 0 else None
    other = out / "other_arch"
    image = bytearray(programs["ticker"].read_bytes())
    image[18:20] = (62 if os.uname().machine == "aarch64" else 183).to_bytes(2, "little")
    other.write_bytes(bytes(image))
    other.chmod(0o755)
    built["other_arch"] = other
    return built


async def sandbox_verdict(state_dir: Path, mode: str = "oci") -> str | None:
    """None when this host can sandbox (``oci``: runc or crun; ``gvisor``: runsc); otherwise why not
    (the reason a sandbox test skips with)."""
    from nex.sandbox.runner import OciRunner

    if mode == "gvisor":
        runner, reason = await OciRunner.probe_gvisor(state_dir)
    else:
        runner, reason = await OciRunner.probe(state_dir)
    return None if runner is not None else reason


@pytest.fixture
async def node(nats_server: NatsServer, tmp_path: Path, request, artifact_roots):
    """A node in this test's event loop, on the test's nats-server.

    Parametrize it indirectly with a sandbox mode (``auto`` by default); ``oci`` and
    ``gvisor`` skip where this host cannot sandbox so. It does not stand for the fleet's reconciler
    (the product's default does): no test of a single node needs one, and its lease and
    passes cost every test time (the fleet tests start nodes that reconcile).
    """
    from nex.node.config import NodeConfig
    from nex.node.node import Node

    sandbox = getattr(request, "param", "auto")
    if sandbox in ("oci", "gvisor"):
        reason = await sandbox_verdict(tmp_path / "probe", sandbox)
        if reason is not None:
            pytest.skip(f"this host cannot sandbox with {sandbox}: {reason}")
    config = NodeConfig(server=nats_server.url, state_dir=tmp_path / "node", name="test-node",
                        tags={"zone": "a"}, stop_grace_s=2.0, lameduck_s=0.2, sandbox=sandbox, reconciler=False,
                        artifact_roots=artifact_roots, function_stats_interval_s=0.5,
                        live_call_events=True)
    started = Node(config)
    await started.start()
    yield started
    await started.shutdown()


# -- a local HTTP server, for the host services' HTTP calls --

class _HttpHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._answer(200, b"hello from http")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(201, b"got " + body)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_url():
    """A local HTTP server: GET answers 'hello from http', POST echoes its body."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HttpHandler)
    # A short poll: shutdown() waits for the serving loop to notice, 0.5 s at the default.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
