"""Native workloads: a 64-bit Linux executable run as a supervised process.

An executable that cannot run here is refused at deploy (:func:`check_executable`);
a dynamically linked one, or a script, runs with a warning: it depends on the host.

Each workload gets its own process group (so stop reaches every child it forks),
a working dir under the node's state dir, only the environment of its deploy
request (never the node's), and PR_SET_PDEATHSIG so that it dies with a
SIGKILLed node. The handle records pid and start time, which lets the next node
start kill what a dead node left without ever hitting a recycled pid. A handle it
cannot read is swept by the workload id every process of the workload carries in
its environment (``NEX_WORKLOAD_ID``).
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import platform
import signal
from pathlib import Path
from typing import Any

from nex.api.errors import BadArtifact, BadRequest
from nex.api.models import Lifecycle, NetworkMode, WorkloadType
from nex.procutil import MAX_LINE, group_alive, new_group_dying_with_parent, pump_lines, signal_group
from nex.runtimes.base import (
    Capabilities, ExitResult, Handle, LogSink, RuntimeContext, WithoutAgent, WorkloadSpec,
)
from nex.runtimes.executable import missing_interpreter, read_executable, verdict

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
CREDS_FILE = "nats.creds"


def check_executable(path: Path, sandboxed: bool, machine: str | None = None) -> list[str]:
    """Raise BadArtifact unless this node can run ``path`` (:mod:`nex.runtimes.executable`);
    the warnings its deploy carries. ``machine``: the node's, ``uname -m``."""
    node_machine = machine or platform.machine()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            executable = read_executable(b"")
        else:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                executable = read_executable(data)
    warnings = verdict(executable, node_machine, sandboxed)
    # Only a node without a sandbox gets this far with an interpreter, and runs it from the host.
    if executable.interpreter is not None and not _runnable(executable.interpreter):
        raise missing_interpreter(executable, node_machine)
    return warnings


def _runnable(program: str) -> bool:
    return os.path.isfile(program) and os.access(program, os.X_OK)


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: tells a process from a later one with the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def process_rss_bytes(pid: int) -> int | None:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (not its children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def workload_processes(workload_id: str) -> list[int]:
    """The live processes whose environment names ``workload_id`` (those a native workload started)."""
    marker = f"NEX_WORKLOAD_ID={workload_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        if marker in environ.split(b"\0"):
            found.append(int(entry))
    return found


def workload_environment(spec: WorkloadSpec, node_id: str, home: str) -> dict[str, str]:
    """The deploy request's environment plus PATH, HOME and the NEX_* names; never the node's."""
    env = {"PATH": BASE_PATH, "HOME": home}
    env.update(spec.env)
    env.update({
        "NEX_WORKLOAD_ID": spec.id, "NEX_WORKLOAD_NAME": spec.name,
        "NEX_NAMESPACE": spec.namespace, "NEX_NODE_ID": node_id,
    })
    return env


class _Running:
    def __init__(self, process: asyncio.subprocess.Process, pumps: list[asyncio.Task]) -> None:
        self.process = process
        self.pumps = pumps
        self.stop_requested = False


class NativeRuntime(WithoutAgent):
    type = WorkloadType.NATIVE
    capabilities = Capabilities(lifecycles=frozenset({Lifecycle.SERVICE, Lifecycle.JOB}))

    def __init__(self, context: RuntimeContext) -> None:
        self._context = context
        self._running: dict[str, _Running] = {}

    async def prepare(self, spec: WorkloadSpec) -> list[str]:
        warnings = check_executable(spec.artifact_path, sandboxed=False)
        if spec.network == NetworkMode.NONE:
            raise BadRequest("network none needs a sandbox, and this node runs native workloads "
                             "as plain processes (nex node up --sandbox)")
        return warnings

    async def start(self, spec: WorkloadSpec, logs: LogSink) -> Handle:
        spec.work_dir.mkdir(parents=True, exist_ok=True)
        env = workload_environment(spec, self._context.node_id, str(spec.work_dir))
        if self._context.credentials is not None:
            env.update(self._context.credentials.file_environment(spec, spec.work_dir / CREDS_FILE))
        try:
            process = await asyncio.create_subprocess_exec(
                spec.name, *spec.argv, executable=str(spec.artifact_path),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, cwd=spec.work_dir, env=env,
                preexec_fn=new_group_dying_with_parent, limit=MAX_LINE,
            )
        except OSError as exc:
            raise BadArtifact(f"cannot execute native artifact: {exc.strerror or exc}") from None
        pumps = [
            asyncio.create_task(pump_lines(process.stdout, logs, "stdout")),
            asyncio.create_task(pump_lines(process.stderr, logs, "stderr")),
        ]
        self._running[spec.id] = _Running(process, pumps)
        self._context.guard.watch(process.pid)
        data = {"pid": process.pid, "pgid": process.pid, "start_time": process_start_time(process.pid)}
        return Handle(workload_id=spec.id, type=self.type, data=data)

    async def wait(self, handle: Handle) -> ExitResult:
        running = self._running[handle.workload_id]
        code = await running.process.wait()
        # Children of the workload live in its group; none may outlive it.
        signal_group(handle.data["pgid"], signal.SIGKILL)
        self._context.guard.release(handle.data["pgid"])
        await asyncio.wait(running.pumps, timeout=2.0)
        for pump in running.pumps:
            pump.cancel()
        self._running.pop(handle.workload_id, None)
        if code < 0:
            return ExitResult(signal=-code)
        return ExitResult(exit_code=code)

    async def stop(self, handle: Handle, grace: float) -> None:
        running = self._running.get(handle.workload_id)
        if running is None or running.process.returncode is not None:
            return
        running.stop_requested = True
        pgid = handle.data["pgid"]
        signal_group(pgid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(running.process.wait()), grace)
        except asyncio.TimeoutError:
            signal_group(pgid, signal.SIGKILL)
            await running.process.wait()

    async def cleanup(self, handle: Handle) -> None:
        handle.require_current()
        pid, pgid = handle.data.get("pid"), handle.data.get("pgid")
        if not pgid:
            return
        current = process_start_time(pid) if pid else None
        if current is not None and current != handle.data.get("start_time"):
            return  # the pid now belongs to another process: not ours to kill
        if group_alive(pgid):
            signal_group(pgid, signal.SIGKILL)

    async def sweep(self, workload_id: str) -> None:
        own = os.getpgrp()
        for pid in workload_processes(workload_id):
            try:
                pgid = os.getpgid(pid)
            except ProcessLookupError:
                continue
            if pgid != own:
                signal_group(pgid, signal.SIGKILL)
            else:  # never the node's own group
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def inspect(self, handle: Handle) -> dict[str, Any]:
        pid = handle.data.get("pid")
        if not pid:
            return {"pid": None}
        return {"pid": pid, "memory_bytes": process_rss_bytes(pid), "cpu_seconds": process_cpu_seconds(pid)}

    async def close(self) -> None:
        # The supervisor has stopped every workload in order; what still runs goes now.
        for running in list(self._running.values()):
            if running.process.returncode is None:
                signal_group(running.process.pid, signal.SIGKILL)
                await running.process.wait()
        self._running.clear()

