"""Readings from a container's cgroup: usage and whether the OOM killer struck.

Works on cgroup v1 (one hierarchy per controller, as on this project's hosts) and
on a unified cgroup v2 hierarchy. Paths come from /proc/self/mountinfo, never assumed.
"""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import suppress
from functools import cache
from pathlib import Path

from nex.api.models import Usage

UNIFIED = "unified"


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


def exists(cgroups_path: str) -> bool:
    """Whether any controller still has a directory for this cgroup."""
    names = ("memory", "pids", "cpu", "cpuacct") if is_v1() else (UNIFIED,)
    for name in names:
        directory = controller_dir(name, cgroups_path)
        if directory is not None and directory.exists():
            return True
    return False


async def kill_and_remove(cgroups_path: str, timeout: float = 5.0) -> None:
    """SIGKILL every process of the cgroup, then remove its directories."""
    names = ("memory", "pids", "cpu", "cpuacct", "cpuset", "devices", "freezer", "blkio") if is_v1() else (UNIFIED,)
    directories = [d for d in (controller_dir(n, cgroups_path) for n in names) if d is not None and d.exists()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for directory in directories:
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


def _procs(directory: Path) -> list[int]:
    try:
        return [int(p) for p in (directory / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []
