"""The OCI runtime driver: runs containers with runc (or crun) and cleans up after them.

A container runs as ``<runtime> --root <state_dir>/runc run --keep`` in the
foreground, a child of the node: its stdout and stderr are the pipes the node
reads, its exit status is the container's (128+N for signal N). ``--keep``
leaves the stopped container in place until :meth:`OciRunner.wait` has read
the OOM counter of its cgroup; ``delete --force`` then removes it.

If the node dies, the runtime process dies with it (PR_SET_PDEATHSIG) but the
container, reparented, would not: every container is listed with the reaper
(``guard.watch_container``), which deletes what is still listed, and the next
node start deletes every ``nex-`` container left under its root (:meth:`sweep`).

The same driver runs gVisor's ``runsc`` (``OciRunner(..., gvisor=GvisorSettings(...))``,
root ``<state_dir>/runsc``): the same bundle, plus the flags, limits and node-made
cgroup of :mod:`nex.sandbox.gvisor`. runsc has no ``--keep``: the container's state
goes with its end, and the cgroup, which the node made, stays until :meth:`OciRunner.cleanup`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import signal
import stat
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nex.api.errors import InternalError
from nex.api.models import Limits, NetworkMode, Usage
from nex.procutil import MAX_LINE, new_group_dying_with_parent, pump_lines, signal_group
from nex.sandbox import cgroups
from nex.sandbox.bundle import CGROUP_PARENT, BundleOptions, ContainerSpec, write_bundle
from nex.sandbox.gvisor import PLATFORMS, RUNSC, GvisorSettings, host_limits
from nex.sandbox.idmap import unmount
from nex.sandbox.idranges import NoFreeRange, host_ranges
from nex.sandbox.probe import exit_zero_elf
from nex.types import ExitResult, LogSink, NoGuard, ProcessGuard

RUNTIMES = ("runc", "crun")
ID_PREFIX = "nex-"
START_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 15.0
# Verdict per runtime binary (and gVisor platform), for the life of the process: the host does not
# change under a node.
_verdicts: dict[str, str | None] = {}


class SandboxUnavailable(RuntimeError):
    """The node was told to sandbox (``--sandbox oci`` or ``gvisor``) and its runtime does not work here."""


def bundle_base(state_dir: Path) -> Path:
    """Where bundles go.

    The runtime mounts the rootfs as the user namespace's root, an unprivileged host
    uid: every directory above the rootfs must be searchable by others. A state dir
    under /root or a pytest temp dir is not; bundles then go to /run/nex-bundles.
    """
    state_dir = state_dir.resolve()
    if all(_searchable(p) for p in [state_dir, *state_dir.parents]):
        return state_dir / "bundles"
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]
    return Path("/run/nex-bundles") / digest


def _searchable(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & stat.S_IXOTH)
    except FileNotFoundError:
        return True  # created later, with the default mode


def make_bundle_dir(path: Path, id_base: int) -> Path:
    """A bundle dir that only the node and the container's root (host ``id_base``) can enter.

    The runtime mounts the rootfs from inside the user namespace, so that root must
    search it; no other host user may reach the rootfs or the bundle's files.
    """
    path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    path.mkdir(mode=0o700, exist_ok=True)
    os.chown(path, id_base, id_base)
    path.chmod(0o700)
    return path


def remove_bundle(bundle: Path) -> bool:
    """Remove a bundle dir, unmounting its rootfs first; False (and nothing removed) when the
    rootfs stays mounted: removing through a mount would reach into what is mounted."""
    try:
        unmount(bundle / "rootfs")
    except OSError:
        return False
    shutil.rmtree(bundle, ignore_errors=True)
    return True


def exit_result(code: int, oom: bool, memory_mib: int | None) -> ExitResult:
    """The runtime's exit status as data: 128+N means the container died of signal N."""
    if oom and code != 0:
        limit = f" of {memory_mib} MiB" if memory_mib else ""
        return ExitResult(signal=signal.SIGKILL, oom_killed=True,
                          error=f"out of memory: killed at the memory limit{limit}")
    if 128 < code < 128 + 65:
        return ExitResult(signal=code - 128)
    return ExitResult(exit_code=code)


@dataclass
class _Container:
    process: asyncio.subprocess.Process
    pumps: list[asyncio.Task]
    pid: int
    cgroups_path: str
    memory_mib: int | None


class OciRunner:
    def __init__(self, binary: str, root: Path, bundles_dir: Path, guard: ProcessGuard | None = None,
                 gvisor: GvisorSettings | None = None) -> None:
        self.binary = binary
        self.root = root
        self.bundles_dir = bundles_dir
        self.guard: ProcessGuard = guard or NoGuard()
        self.gvisor = gvisor
        self._containers: dict[str, _Container] = {}

    @property
    def name(self) -> str:
        return Path(self.binary).name

    @classmethod
    def for_state_dir(cls, binary: str, state_dir: Path, guard: ProcessGuard | None = None,
                      gvisor: GvisorSettings | None = None) -> OciRunner:
        root = state_dir / (RUNSC if gvisor is not None else "runc")
        return cls(binary, root, bundle_base(state_dir), guard, gvisor)

    # -- detection -----------------------------------------------------------------

    @classmethod
    async def detect(cls, state_dir: Path, guard: ProcessGuard | None = None) -> OciRunner | None:
        """The first runtime on PATH that runs a trivial sandboxed bundle here, or None."""
        runner, _ = await cls.probe(state_dir, guard)
        return runner

    @classmethod
    async def probe(cls, state_dir: Path, guard: ProcessGuard | None = None) -> tuple[OciRunner | None, str]:
        """Like :meth:`detect`, with the reason when nothing works."""
        reasons = []
        for name in RUNTIMES:
            binary = shutil.which(name)
            if binary is None:
                reasons.append(f"{name} is not on PATH")
                continue
            runner = cls.for_state_dir(binary, state_dir, guard)
            if binary not in _verdicts:
                _verdicts[binary] = await runner._run_trivial()
            if _verdicts[binary] is None:
                return runner, ""
            reasons.append(f"{name}: {_verdicts[binary]}")
        return None, "; ".join(reasons)

    @classmethod
    async def probe_gvisor(cls, state_dir: Path, guard: ProcessGuard | None = None,
                           platform: str | None = None) -> tuple[OciRunner | None, str]:
        """A runsc runner on the first platform that runs the trivial bundle (or ``platform``), with
        the reason when none does."""
        binary = shutil.which(RUNSC)
        if binary is None:
            return None, f"{RUNSC} is not on PATH"
        reasons = []
        for candidate in [platform] if platform else PLATFORMS:
            runner = cls.for_state_dir(binary, state_dir, guard, GvisorSettings(candidate))
            key = f"{binary} --platform={candidate}"
            if key not in _verdicts:
                _verdicts[key] = await runner._run_trivial()
            if _verdicts[key] is None:
                return runner, ""
            reasons.append(f"--platform={candidate}: {_verdicts[key]}")
        return None, f"{RUNSC} " + "; ".join(reasons)

    @classmethod
    def find(cls, state_dir: Path) -> OciRunner | None:
        """A runner for cleanup only (no detection): whichever runtime is on PATH."""
        for name in RUNTIMES:
            binary = shutil.which(name)
            if binary is not None:
                return cls.for_state_dir(binary, state_dir)
        return None

    @classmethod
    def find_all(cls, state_dir: Path) -> list[OciRunner]:
        """Runners for cleanup only: runc (or crun) and runsc when on PATH, each on its own root."""
        found = [runner for runner in [cls.find(state_dir)] if runner is not None]
        runsc = shutil.which(RUNSC)
        if runsc is not None:
            found.append(cls.for_state_dir(runsc, state_dir, gvisor=GvisorSettings(PLATFORMS[-1])))
        return found

    async def _run_trivial(self) -> str | None:
        """None when a bundle with every sandbox feature runs and exits 0; otherwise why not."""
        program = exit_zero_elf()
        if program is None:
            return f"no probe program for {os.uname().machine}"
        container_id = f"{ID_PREFIX}probe-{secrets.token_hex(4)}"
        try:
            ids = host_ranges().allocate(f"{self.root} {container_id}")
        except (OSError, NoFreeRange) as exc:
            return f"no uid range for the sandbox: {exc}"
        bundle = self.bundles_dir / container_id
        try:
            make_bundle_dir(bundle, ids.base)
            rootfs = bundle / "rootfs"
            rootfs.mkdir(mode=0o755)
            (rootfs / "probe").write_bytes(program)
            (rootfs / "probe").chmod(0o555)
            spec = ContainerSpec(id=container_id, rootfs=rootfs, args=["/probe"], network=NetworkMode.NONE,
                                 limits=Limits(memory_mib=16, cpus=0.5, pids=8), id_base=ids.base)
            self.write_bundle(spec, bundle)
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._make_cgroup(spec)
            # The very flags start() uses, so that a runtime that lacks one fails here.
            # gVisor's kvm platform hangs on a nested host: its verdict should not take long.
            code, output = await self._command(*self._run_args(bundle, container_id), network=spec.network,
                                               timeout=PROBE_TIMEOUT_S if self.gvisor else COMMAND_TIMEOUT_S)
            if code == 0:
                return None
            return _runtime_error(bundle / "runc.log") or output.decode(errors="replace").strip() or f"exit {code}"
        except asyncio.TimeoutError:
            took = PROBE_TIMEOUT_S if self.gvisor else COMMAND_TIMEOUT_S
            return f"a trivial container did not finish within {took:.0f} s"
        except OSError as exc:
            return str(exc) or type(exc).__name__
        finally:
            await self.cleanup(container_id)
            shutil.rmtree(bundle, ignore_errors=True)
            host_ranges().release(ids.slot)
            self.close()

    # -- one container -----------------------------------------------------------

    def _argv(self, *args: str, network: NetworkMode | None = None) -> list[str]:
        flags = self.gvisor.flags(network) if self.gvisor is not None else []
        return [self.binary, "--root", str(self.root), *flags, *args]

    def _run_args(self, bundle: Path, container_id: str) -> list[str]:
        # runc keeps the ended container for its OOM counter; runsc's cgroup is the node's and stays anyway.
        keep = ["--keep"] if self.gvisor is None else []
        return ["--log", str(bundle / "runc.log"), "--log-format", "json", "run", *keep, "--bundle", str(bundle),
                "--pid-file", str(bundle / "init.pid"), container_id]

    def write_bundle(self, spec: ContainerSpec, bundle: Path) -> Path:
        """The bundle's config.json for this runtime (gVisor's needs: ``GvisorSettings.bundle_options``)."""
        options = self.gvisor.bundle_options(spec.network) if self.gvisor is not None else BundleOptions()
        return write_bundle(spec, bundle, options)

    def _make_cgroup(self, spec: ContainerSpec) -> None:
        """gVisor: the node makes the cgroup, with headroom for gVisor's own tasks and memory."""
        if self.gvisor is not None:
            cgroups.create(spec.cgroups_path, host_limits(spec.limits))

    async def _command(self, *args: str, timeout: float = COMMAND_TIMEOUT_S,
                       network: NetworkMode | None = None) -> tuple[int, bytes]:
        process = await asyncio.create_subprocess_exec(
            *self._argv(*args, network=network), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout)
        except BaseException:
            if process.returncode is None:
                process.kill()
                await process.wait()
            raise
        return process.returncode, output

    async def start(self, spec: ContainerSpec, bundle_dir: Path, logs: LogSink) -> dict[str, Any]:
        """Run the container of ``bundle_dir``; return once its process runs (handle data)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        pid_file, log_file = bundle_dir / "init.pid", bundle_dir / "runc.log"
        pid_file.unlink(missing_ok=True)
        # Listed before it exists: a node killed during the start leaves nothing either.
        self.guard.watch_container(self.binary, str(self.root), spec.id)
        try:
            self._make_cgroup(spec)
        except OSError as exc:
            await self.cleanup(spec.id)
            raise InternalError(f"cannot make the sandbox's cgroup: {exc}") from None
        try:
            process = await asyncio.create_subprocess_exec(
                *self._argv(*self._run_args(bundle_dir, spec.id), network=spec.network),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, preexec_fn=new_group_dying_with_parent, limit=MAX_LINE,
            )
        except OSError as exc:
            await self.cleanup(spec.id)
            raise InternalError(f"cannot run {self.name}: {exc.strerror or exc}") from None
        pumps = [asyncio.create_task(pump_lines(process.stdout, logs, "stdout")),
                 asyncio.create_task(pump_lines(process.stderr, logs, "stderr"))]
        try:
            pid = await _wait_for_pid(process, pid_file)
        except BaseException:
            await self._abandon(spec.id, process, pumps)
            raise
        if pid is None:
            reason = _runtime_error(log_file) or f"{self.name} exited with {process.returncode}"
            await self._abandon(spec.id, process, pumps)
            raise InternalError(f"the sandbox did not start: {reason}")
        self._containers[spec.id] = _Container(process, pumps, pid, spec.cgroups_path, spec.limits.memory_mib)
        data = {"container_id": spec.id, "runtime": self.binary, "root": str(self.root), "pid": pid,
                "cgroups_path": spec.cgroups_path, "bundle": str(bundle_dir)}
        if self.gvisor is not None:
            data["gvisor_platform"] = self.gvisor.platform
        return data

    async def _abandon(self, container_id: str, process: asyncio.subprocess.Process,
                       pumps: list[asyncio.Task]) -> None:
        if process.returncode is None:
            signal_group(process.pid, signal.SIGKILL)
        await asyncio.shield(self.cleanup(container_id))
        await process.wait()
        for pump in pumps:
            pump.cancel()

    async def wait(self, container_id: str) -> ExitResult:
        """The container's exit, once it has ended; its cgroup and state are gone then."""
        container = self._containers[container_id]
        try:
            code = await container.process.wait()
            oom = cgroups.oom_killed(container.cgroups_path)
            await asyncio.wait(container.pumps, timeout=2.0)
        finally:
            for pump in container.pumps:
                pump.cancel()
            await asyncio.shield(self.cleanup(container_id))
            self._containers.pop(container_id, None)
        return exit_result(code, oom, container.memory_mib)

    async def stop(self, container_id: str, grace: float) -> None:
        """SIGTERM, ``grace`` seconds, then SIGKILL; returns once the container has ended."""
        container = self._containers.get(container_id)
        if container is None or container.process.returncode is not None:
            return
        await self._command("kill", container_id, "TERM")
        try:
            await asyncio.wait_for(asyncio.shield(container.process.wait()), grace)
            return
        except asyncio.TimeoutError:
            pass
        await self._command("kill", container_id, "KILL")
        try:
            await asyncio.wait_for(asyncio.shield(container.process.wait()), 10.0)
        except asyncio.TimeoutError:
            # The runtime itself hangs: take it down, and the container with it.
            signal_group(container.process.pid, signal.SIGKILL)
            await self._command("delete", "--force", container_id)
            await container.process.wait()

    def usage(self, container_id: str) -> Usage:
        container = self._containers.get(container_id)
        path = container.cgroups_path if container else f"{CGROUP_PARENT}/{container_id}"
        return cgroups.usage(path)

    def pid(self, container_id: str) -> int | None:
        container = self._containers.get(container_id)
        return container.pid if container else None

    async def cleanup(self, container_id: str) -> None:
        """Kill and remove a container, running or left by a dead node; harmless when gone."""
        cgroups_path = f"{CGROUP_PARENT}/{container_id}"
        if self.gvisor is not None:
            # runsc's delete --force first asks a live sandbox to stop, and waits 5 s for it:
            # killed first (every process of its cgroup, its kernel included), it deletes at once.
            cgroups.kill_all(cgroups_path)
        await self._command("delete", "--force", container_id)
        if cgroups.exists(cgroups_path):
            # The runtime lost its state but the cgroup stayed: empty and remove it by hand.
            await cgroups.kill_and_remove(cgroups_path)
        self.guard.release_container(self.binary, str(self.root), container_id)

    async def list_containers(self) -> list[str]:
        """Ids of the nex containers under this runner's root."""
        if not self.root.is_dir():
            return []
        code, output = await self._command("list", "--format", "json")
        if code != 0:
            return []
        try:
            entries = json.loads(output) or []
        except ValueError:
            return []
        return [e["id"] for e in entries if str(e.get("id", "")).startswith(ID_PREFIX)]

    def close(self) -> None:
        """At node exit: remove the bundles dir when nothing is left in it."""
        with suppress(OSError):
            self.bundles_dir.rmdir()

    async def sweep(self) -> list[str]:
        """Remove every nex container under the root (at node start, all are leftovers)."""
        ids = await self.list_containers()
        for container_id in ids:
            await self.cleanup(container_id)
        return ids


async def _wait_for_pid(process: asyncio.subprocess.Process, pid_file: Path) -> int | None:
    """The container's pid once the runtime wrote it; None if the runtime exited first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    delay = 0.002
    while loop.time() < deadline:
        try:
            text = pid_file.read_text().strip()
        except FileNotFoundError:
            text = ""
        if text.isdigit():
            return int(text)
        if process.returncode is not None:
            return None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.005)
    return None


def _runtime_error(log_file: Path) -> str | None:
    """What the runtime logged as errors: runc writes JSON lines with a ``msg``, runsc the same
    objects without newlines between them. The first error is the cause (runsc then adds what
    failed because of it), the last runc's; both are said when they differ."""
    try:
        text = log_file.read_text()
    except OSError:
        return None
    decoder, errors, at = json.JSONDecoder(), [], 0
    while at < len(text):
        while at < len(text) and text[at].isspace():
            at += 1
        try:
            entry, at = decoder.raw_decode(text, at)
        except ValueError:
            next_line = text.find("\n", at)
            if next_line < 0:
                break
            at = next_line + 1
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal") and entry.get("msg"):
            errors.append(str(entry["msg"]).strip())
    if not errors:
        return None
    return errors[0] if len(errors) == 1 or errors[0] == errors[-1] else f"{errors[0]} (then: {errors[-1]})"
