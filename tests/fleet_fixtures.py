"""Fleet fixtures: a real 3-server NATS cluster, a leaf server, and nex nodes as real processes.

Everything is on loopback and bounded in time. The chaos helpers are here too:
stop, SIGKILL and restart one nats-server of the cluster, SIGKILL or restart a node.
A node's output goes to a log file in the test's tmp dir; the fixtures print the
tail of every log at teardown, which pytest shows when the test failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import nats
import pytest
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js.api import StreamConfig
from nats.js.errors import Error as JetStreamError

from nex.api import subjects
from nex.natsserver import NatsServer
from nex.node import identity

from helpers import ARTIFACT_ROOTS, eventually, scrape, value

SERVER_NAMES = ("n1", "n2", "n3")
ZONES = ("a", "b", "c")
# Short fleet timings, so that the chaos tests converge within their bounds; not shorter,
# because a SIGKILLed nats-server leaves its streams leaderless for a few seconds.
# No "replicas": on the cluster, the nodes give their streams and buckets 3 by themselves.
# Metrics on a port of the system's choosing, which the node logs: how a test counts reconciler passes.
FLEET_CONFIG: dict[str, Any] = {
    "registry_interval_s": 0.5, "node_timeout_s": 3.0, "lease_s": 3.0,
    "reconcile_interval_s": 0.5, "sandbox": "none", "stop_grace_s": 2.0, "lameduck_s": 0.5,
    "metrics_port": 0,
}
_PROBE_STREAM = "FLEET_FIXTURE_PROBE"


async def _bounded(check: Callable[[], Awaitable[Any]], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Retry ``check`` until it returns something truthy without raising; fail after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: BaseException | None = None
    while loop.time() < deadline:
        try:
            result = await asyncio.wait_for(check(), max(0.1, deadline - loop.time()))
            if result:
                return result
        except (NatsError, JetStreamError, asyncio.TimeoutError, OSError) as exc:
            last = exc
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} within {timeout:.0f}s" + (f" (last: {type(last).__name__}: {last})" if last else ""))


def _growing(first: float = 0.25, most: float = 2.0) -> Callable[[], float]:
    """Per-attempt time-outs that start short and double up to ``most``. JetStream leaves a request
    unanswered until the servers have elected a meta leader (some 0.4 s after they start), so a
    first attempt with a long time-out would wait it out in full; later ones get longer, for a
    loaded machine."""
    current = first / 2

    def next_timeout() -> float:
        nonlocal current
        current = min(most, current * 2)
        return current
    return next_timeout


async def _client(servers: list[str], **options: Any) -> nats.NATS:
    """The fixtures' own client: it leaves a stopped, killed or frozen server within seconds."""
    return await nats.connect(servers=servers, connect_timeout=2, reconnect_time_wait=0.2,
                              max_reconnect_attempts=-1, dont_randomize=True, ping_interval=1,
                              max_outstanding_pings=2, **options)


class Cluster:
    """Three nats-servers routed to each other, JetStream replicated, leaf connections accepted."""

    def __init__(self, root: Path, names: tuple[str, ...] = SERVER_NAMES) -> None:
        self.servers = [
            NatsServer(store_dir=root / name, port=0, server_name=name, cluster_name="nex-test",
                       cluster_port=0, leafnode_port=0)
            for name in names
        ]
        for server in self.servers:
            server.reserve_ports()
        for server in self.servers:
            server.routes = [other.route_url for other in self.servers if other is not server]

    @property
    def urls(self) -> str:
        """Every server, comma-joined: a value for ``--server``."""
        return ",".join(s.url for s in self.servers)

    def urls_from(self, index: int) -> list[str]:
        """Every server's URL, server ``index`` first: a client connects there, then fails over."""
        return [s.url for s in self.servers[index:] + self.servers[:index]]

    def index(self, name: str) -> int:
        return [s.server_name for s in self.servers].index(name)

    def server(self, name: str) -> NatsServer:
        return self.servers[self.index(name)]

    async def start(self, timeout: float = 20.0) -> None:
        await asyncio.gather(*(s.start() for s in self.servers))
        await self.wait_jetstream(timeout)

    async def wait_jetstream(self, timeout: float = 20.0) -> None:
        """Return once the running servers elect a meta leader and can hold an R3 stream."""
        running = [s.url for s in self.servers if s.running]
        nc = await _client(running)
        try:
            attempt_timeout = _growing()

            async def r3_stream() -> bool:
                js = nc.jetstream(timeout=attempt_timeout())
                await js.add_stream(StreamConfig(name=_PROBE_STREAM, subjects=["fleet.fixture.probe"],
                                                 num_replicas=3))
                await js.delete_stream(_PROBE_STREAM)
                return True
            await _bounded(r3_stream, timeout, "the cluster did not form (JetStream meta leader, R3 stream)")
        finally:
            await nc.close()

    async def stop(self, name: str) -> None:
        await self.server(name).stop()

    async def kill(self, name: str) -> None:
        await self.server(name).kill()

    def freeze(self, name: str) -> None:
        """SIGSTOP: the server keeps its connections open and answers nothing, like a host cut
        off the network without a reset. ``thaw`` (SIGCONT) lets it go on."""
        os.kill(self.server(name).pid, signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        os.kill(self.server(name).pid, signal.SIGCONT)

    async def restart(self, name: str, timeout: float = 20.0) -> None:
        """Start a stopped or killed server again, same ports, same store; return once the
        cluster holds R3 streams again."""
        await self.server(name).restart()
        await self.wait_jetstream(timeout)

    def home(self, node: NodeProcess) -> str:
        """The name of the server ``node`` connects to first."""
        return next(s.server_name for s in self.servers if s.url == node.servers[0])

    async def close(self) -> None:
        for server in self.servers:
            if server.running:
                os.kill(server.pid, signal.SIGCONT)  # a frozen server could not act on SIGTERM
        await asyncio.gather(*(s.stop() for s in self.servers))


@pytest.fixture
async def nats_cluster(tmp_path: Path):
    cluster = Cluster(tmp_path / "cluster")
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.close()


@pytest.fixture
async def leaf_server(nats_cluster: Cluster, tmp_path: Path):
    """A nats-server connected as a leaf node to every server of the cluster, without JetStream
    of its own: its clients' JetStream requests are answered by the hub."""
    leaf = NatsServer(store_dir=tmp_path / "leaf", port=0, jetstream=False, server_name="leaf",
                      leaf_remotes=[s.leafnode_url for s in nats_cluster.servers])
    await leaf.start()
    try:
        nc = await _client([leaf.url])
        try:
            attempt_timeout = _growing()
            await _bounded(lambda: nc.jetstream(timeout=attempt_timeout()).account_info(), 15,
                           "the leaf server did not reach the hub's JetStream")
        finally:
            await nc.close()
        yield leaf
    finally:
        await leaf.stop()


def _toml(values: dict[str, Any]) -> str:
    """The TOML of a flat config with at most one level of tables (enough for NodeConfig); a key
    whose value is None is left out (the node's default)."""
    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        return json.dumps(str(value))
    lines = [f"{key} = {scalar(value)}" for key, value in values.items()
             if value is not None and not isinstance(value, dict)]
    for key, table in values.items():
        if isinstance(table, dict):
            lines.append(f"[{key}]")
            lines += [f"{json.dumps(k)} = {scalar(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


class NodeProcess:
    """`nex node up` as a real process, in a session of its own.

    The node id is known before the first start: the fixture makes the node's key
    pair in its state dir, where the node finds it.
    """

    def __init__(self, name: str, servers: list[str], root: Path, probe: nats.NATS,
                 tags: dict[str, str] | None = None, config: dict[str, Any] | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.name = name
        self.servers = servers
        self.state_dir = root / "state"
        self.log_path = root / "node.log"
        self.config_path = root / "node.toml"
        self.tags = tags or {}
        self.extra_args = extra_args or []
        self.config = {**FLEET_CONFIG, "artifact_roots": [str(root) for root in ARTIFACT_ROOTS], **(config or {})}
        self._probe = probe
        self.node_id = identity.node_id(identity.load_or_create(self.state_dir))
        self.process: asyncio.subprocess.Process | None = None
        self.config_path.write_text(_toml(self.config))

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def arguments(self) -> list[str]:
        args = ["--server", ",".join(self.servers), "--state-dir", str(self.state_dir),
                "--name", self.name, "--config", str(self.config_path)]
        if self.tags:
            args += ["--tags", ",".join(f"{k}={v}" for k, v in self.tags.items())]
        return args + self.extra_args

    async def start(self, timeout: float = 30.0) -> None:
        """Start the node; return once it answers ``PING.<node id>``."""
        if self.running:
            raise RuntimeError(f"node {self.name} is already running")
        with open(self.log_path, "ab") as log:
            log.write(f"---- nex node up {' '.join(self.arguments())}\n".encode())
            log.flush()
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "nex", "node", "up", *self.arguments(),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                env={**os.environ, "COLUMNS": "200"},
            )
        try:
            await self.wait_answering(timeout)
        except AssertionError:
            print(self.describe())
            raise

    async def ping(self, timeout: float = 1.0) -> dict | None:
        """The node's PING reply, or None when it does not answer."""
        try:
            msg = await self._probe.request(subjects.control(subjects.DEFAULT_NAMESPACE, "PING", self.node_id),
                                            b"", timeout=timeout)
        except (NoRespondersError, asyncio.TimeoutError, NatsError):
            return None
        return json.loads(msg.data)

    async def wait_answering(self, timeout: float = 30.0) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if not self.running:
                raise AssertionError(f"node {self.name} exited with {self.process.returncode} before it answered")
            reply = await self.ping(0.5)
            if reply is not None:
                return reply
            await asyncio.sleep(0.1)
        raise AssertionError(f"node {self.name} did not answer PING within {timeout:.0f}s")

    async def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code, None if it was not running."""
        if not self.running:
            return None
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:
            await self.kill()
            raise AssertionError(f"node {self.name} did not stop within {timeout:.0f}s of SIGTERM") from None

    async def kill(self) -> None:
        """SIGKILL of the node alone: its reaper, not the test, must kill the workloads."""
        if self.running:
            self.process.kill()
        if self.process is not None:
            await self.process.wait()

    async def restart(self, timeout: float = 30.0) -> None:
        await self.stop()
        await self.start(timeout)

    def metrics_url(self) -> str | None:
        """Where this run of the node serves its metrics, as its log says (the last start's line)."""
        found = re.findall(r"metrics on (http://\S+)", self.log_tail(10_000))
        return found[-1] if found else None

    async def reconciler_passes(self) -> int | None:
        """The passes its reconciler made (nex_reconciler_passes_total); None when the node does not
        answer (stopped, killed, frozen) or its reconciler is off."""
        url = self.metrics_url() if self.running else None
        if url is None:
            return None
        try:
            samples = await scrape(url, timeout=2.0)
        except (OSError, asyncio.TimeoutError, aiohttp.ClientError):
            return None
        passes = value(samples, "nex_reconciler_passes_total")
        return None if passes is None else int(passes)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def describe(self) -> str:
        return f"---- node {self.name} ({self.node_id[:8]}), log {self.log_path}:\n{self.log_tail()}"


@pytest.fixture
async def node_processes(nats_cluster: Cluster, tmp_path: Path):
    """Factory: ``await node_processes(n, **config)`` starts n nodes spread round-robin over the
    cluster's servers (node i connects to server i mod 3 first, the others are its fallbacks),
    tagged ``zone`` a, b, c like their server, and returns them once all answer PING."""
    probe = await _client(nats_cluster.urls_from(0))
    started: list[NodeProcess] = []

    async def start(n: int, tags: dict[str, str] | None = None, **config: Any) -> list[NodeProcess]:
        batch = []
        for _ in range(n):
            i = len(started)
            where = i % len(nats_cluster.servers)
            node = NodeProcess(f"node{i + 1}", nats_cluster.urls_from(where), tmp_path / f"node{i + 1}", probe,
                               tags={"zone": ZONES[where], **(tags or {})}, config=config)
            started.append(node)
            batch.append(node)
        await asyncio.gather(*(node.start() for node in batch))
        return batch

    try:
        yield start
    finally:
        await asyncio.gather(*(node.stop() for node in started), return_exceptions=True)
        for node in started:
            print(node.describe())
        await probe.close()


class AppFleet:
    """A test's view of a fleet of node processes running one app: a client on the cluster, the
    app store, the nodes; what runs is read from the nodes themselves (WPING), not the registry."""

    def __init__(self, cluster: Cluster, nodes: list[NodeProcess], client: Any, app: str) -> None:
        from nex.fleet.store import AppStore

        self.cluster, self.nodes, self.client, self.app = cluster, nodes, client, app
        self.store = AppStore(client.nc)

    def node(self, node_id: str) -> NodeProcess:
        return next(n for n in self.nodes if n.node_id == node_id)

    async def running(self) -> dict[str, str]:
        """Workload id → node id of every running replica of the app, as the nodes answer WPING."""
        from nex.api.models import WorkloadState

        live = sum(1 for n in self.nodes if n.running)
        found = await self.client.workloads(wait=1.5, expected_nodes=live)
        return {w.id: w.node_id for w in found
                if w.app is not None and w.app.name == self.app and w.state == WorkloadState.RUNNING}

    async def converged(self, replicas: int, timeout: float = 20.0,
                        not_on: frozenset[str] | set[str] = frozenset()) -> dict[str, str]:
        """Once exactly ``replicas`` run (none on ``not_on``), and still do a second later."""
        async def exact() -> dict[str, str] | None:
            running = await self.running()
            if len(running) != replicas or set(running.values()) & not_on:
                return None
            await asyncio.sleep(1.0)
            again = await self.running()
            return running if again == running else None
        return await eventually(exact, timeout=timeout, interval=0.3)

    async def reconciler_passes(self, count: int, nodes: list[NodeProcess] | None = None,
                                timeout: float = 30.0) -> None:
        """Return once the reconcilers of ``nodes`` (every node by default; leave out a frozen one,
        it cannot answer a scrape) made ``count`` more passes between them, read from their metrics.
        Only the lease holder makes passes, so they are counted together, whoever holds the lease."""
        watched = nodes if nodes is not None else self.nodes

        async def made() -> dict[str, int]:
            counts = await asyncio.gather(*(n.reconciler_passes() for n in watched))
            return {n.node_id: c for n, c in zip(watched, counts) if c is not None}
        start = await made()

        async def enough() -> bool:
            now = await made()
            return sum(max(0, c - start.get(node_id, 0)) for node_id, c in now.items()) >= count
        await eventually(enough, timeout=timeout, interval=0.2)

    async def holder(self) -> str | None:
        """The node id of the reconciler's lease holder; None while nobody (or no answer: JetStream
        electing a leader for the bucket)."""
        from nex.api.errors import Unavailable

        try:
            lease = await self.store.lease()
        except Unavailable:
            return None
        return lease.holder if lease else None
