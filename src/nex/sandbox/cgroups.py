"""Readings from a container's cgroup: usage and whether the OOM killer struck.

Works on cgroup v1 (one hierarchy per controller, as on this project's hosts) and
on a unified cgroup v2 hierarchy. Paths come from /proc/self/mountinfo, never assumed.
"""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from nex.api.models import Usage

UNIFIED = "unified"


@dataclass(frozen=True)
class HostLimits:
    """Limits as the host's cgroup holds them (bytes, tasks, a CPU quota per period)."""

    memory_bytes: int | None = None
    pids: int | None = None
    cpu_quota_us: int | None = None
    cpu_period_us: int = 100_000


@cache
def hierarchies() -> dict[str, Path]:
    """Controller name (or ``unified``) → mount point of its hierarchy."""
    found: dict[str, Path] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, options = fields[sep + 1], fields[sep + 3].split(",")
            mount_point = Path(fields[4])
            if fstype == "cgroup":
                for option in options:
                    found.setdefault(option, mount_point)
            elif fstype == "cgroup2":
                found.setdefault(UNIFIED, mount_point)
    return found


def is_v1() -> bool:
    return "memory" in hierarchies()


def controller_dir(controller: str, cgroups_path: str) -> Path | None:
    """The directory of ``cgroups_path`` for ``controller`` (v1), or in the unified tree (v2)."""
    mounts = hierarchies()
    base = mounts.get(controller) if is_v1() else mounts.get(UNIFIED)
    if base is None:
        return None
    return base / cgroups_path.lstrip("/")


def _read_int(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _read_keyed(path: Path | None) -> dict[str, int]:
    values: dict[str, int] = {}
    if path is None:
        return values
    try:
        text = path.read_text()
    except OSError:
        return values
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[key] = int(value)
    return values


def _file(controller: str, cgroups_path: str, name: str) -> Path | None:
    directory = controller_dir(controller, cgroups_path)
    return directory / name if directory is not None else None


def usage(cgroups_path: str) -> Usage:
    if is_v1():
        cpu_ns = _read_int(_file("cpuacct", cgroups_path, "cpuacct.usage"))
        cpu = cpu_ns / 1e9 if cpu_ns is not None else None
        memory = _read_int(_file("memory", cgroups_path, "memory.usage_in_bytes"))
        pids = _read_int(_file("pids", cgroups_path, "pids.current"))
    else:
        usec = _read_keyed(_file("cpu", cgroups_path, "cpu.stat")).get("usage_usec")
        cpu = usec / 1e6 if usec is not None else None
        memory = _read_int(_file("memory", cgroups_path, "memory.current"))
        pids = _read_int(_file("pids", cgroups_path, "pids.current"))
    return Usage(cpu_seconds=cpu, memory_bytes=memory, pids=pids)


def oom_killed(cgroups_path: str) -> bool:
    """Whether the kernel's OOM killer killed a process of this cgroup."""
    if is_v1():
        control = _read_keyed(_file("memory", cgroups_path, "memory.oom_control"))
        if "oom_kill" in control:
            return control["oom_kill"] > 0
        # Kernels before 4.13 have no counter: hitting the limit is the best sign left.
        return (_read_int(_file("memory", cgroups_path, "memory.failcnt")) or 0) > 0
    return _read_keyed(_file("memory", cgroups_path, "memory.events")).get("oom_kill", 0) > 0


def directories(cgroups_path: str) -> list[Path]:
    """Every directory ``cgroups_path`` may have, one per mounted hierarchy (v1 and the unified one).

    A runtime creates the cgroup in every hierarchy it knows (runsc's failed starts leave
    ``cpuset``, ``devices``, ``freezer``, ``blkio`` and ``name=systemd`` behind too), so cleanup
    looks in each, not only in the controllers whose limits Nex sets.
    """
    mounts = sorted(set(hierarchies().values()))
    return [mount / cgroups_path.lstrip("/") for mount in mounts]


def exists(cgroups_path: str) -> bool:
    """Whether any hierarchy still has a directory for this cgroup."""
    return any(directory.exists() for directory in directories(cgroups_path))


async def kill_and_remove(cgroups_path: str, timeout: float = 5.0) -> None:
    """SIGKILL every process of the cgroup, then remove its directories in every hierarchy."""
    found = [d for d in directories(cgroups_path) if d.exists()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for directory in found:
        while directory.exists():
            for pid in _procs(directory):
                with suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            try:
                directory.rmdir()
            except FileNotFoundError:
                break
            except OSError:
                if loop.time() > deadline:
                    break
                await asyncio.sleep(0.02)


def kill_all(cgroups_path: str) -> int:
    """SIGKILL every process of the cgroup, in every hierarchy; how many were signalled."""
    killed = 0
    for directory in directories(cgroups_path):
        for pid in _procs(directory):
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed


def create(cgroups_path: str, limits: HostLimits) -> None:
    """Make the cgroup with these limits before a runtime joins it (runsc joins a cgroup that
    exists and leaves it in place: its OOM counter can be read after the sandbox ended).

    Raises OSError when a directory or a limit cannot be written; what was made stays, for
    :func:`kill_and_remove`.
    """
    if is_v1():
        wanted = {"memory": limits.memory_bytes is not None, "pids": limits.pids is not None,
                  "cpu": limits.cpu_quota_us is not None, "cpuacct": True}
        for name in ("memory", "pids", "cpu", "cpuacct"):
            directory = controller_dir(name, cgroups_path)
            if directory is None:
                if wanted[name] and name != "cpuacct":
                    raise OSError(f"no cgroup hierarchy for the {name} controller")
                continue
            directory.mkdir(parents=True, exist_ok=True)
        if limits.memory_bytes is not None:
            _write(controller_dir("memory", cgroups_path), "memory.limit_in_bytes", limits.memory_bytes)
        if limits.pids is not None:
            _write(controller_dir("pids", cgroups_path), "pids.max", limits.pids)
        if limits.cpu_quota_us is not None:
            cpu = controller_dir("cpu", cgroups_path)
            _write(cpu, "cpu.cfs_period_us", limits.cpu_period_us)
            _write(cpu, "cpu.cfs_quota_us", limits.cpu_quota_us)
        return
    base = hierarchies().get(UNIFIED)
    if base is None:
        raise OSError("no cgroup hierarchy mounted")
    # v2: a controller works in a cgroup only when every parent delegates it (cgroup.subtree_control).
    directory = base
    for part in Path(cgroups_path.lstrip("/")).parts:
        with suppress(OSError):  # already on, or not ours to delegate: the limit's write below says
            (directory / "cgroup.subtree_control").write_text("+cpu +memory +pids")
        directory = directory / part
        directory.mkdir(exist_ok=True)
    if limits.memory_bytes is not None:
        _write(directory, "memory.max", limits.memory_bytes)
    if limits.pids is not None:
        _write(directory, "pids.max", limits.pids)
    if limits.cpu_quota_us is not None:
        (directory / "cpu.max").write_text(f"{limits.cpu_quota_us} {limits.cpu_period_us}")


def _write(directory: Path | None, name: str, value: int) -> None:
    if directory is None:
        raise OSError(f"no cgroup directory for {name}")
    (directory / name).write_text(str(value))


def _procs(directory: Path) -> list[int]:
    try:
        return [int(p) for p in (directory / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []
