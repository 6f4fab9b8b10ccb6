"""What the host has: automatic tags and resource readings."""

from __future__ import annotations

import os
import platform

from nex.api.models import Resources


def _meminfo() -> dict[str, int]:
    values = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
    return values


def resources() -> Resources:
    mem = _meminfo()
    return Resources(
        cpus=os.cpu_count() or 1,
        memory_bytes=mem.get("MemTotal", 0),
        memory_available_bytes=mem.get("MemAvailable", 0),
        load_1m=os.getloadavg()[0],
    )


def automatic_tags() -> dict[str, str]:
    """Tags every node carries, under the ``nex.`` prefix so they never clash with user tags."""
    mem = _meminfo()
    return {
        "nex.os": platform.system().lower(),
        "nex.arch": platform.machine(),
        "nex.cpus": str(os.cpu_count() or 1),
        "nex.memory_mib": str(mem.get("MemTotal", 0) >> 20),
    }
