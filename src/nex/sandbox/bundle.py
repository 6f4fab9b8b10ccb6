"""OCI runtime-spec bundles: a pure function from a :class:`ContainerSpec` to config.json.

The sandbox every bundle describes:

- the root filesystem read-only (``readonly_root``); /proc, a minimal /dev
  (tmpfs with the standard device nodes, devpts, /dev/shm) and a private
  writable /tmp (tmpfs, ``TMP_SIZE``);
- own PID, mount, IPC and UTS namespaces, and a network namespace of its own for
  ``NetworkMode.NONE`` (loopback only);
- a user namespace that maps container uids/gids 0-65535 to the container's own host
  range, ``id_base`` and up (:mod:`nex.sandbox.idranges`: no two live containers
  share one); the process runs as ``nobody`` (65534) inside by default, so it is an
  unmapped user on the host too (uid ``id_base + 65534``);
- no capabilities in any set, ``noNewPrivileges``, and the seccomp deny-list of
  :mod:`nex.sandbox.seccomp`;
- cgroup limits from :class:`~nex.api.models.Limits`: memory, CPU quota, pids.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nex.api.models import Limits, NetworkMode
from nex.sandbox.idranges import HOST_ID_BASE, ID_RANGE
from nex.sandbox.seccomp import default_profile

OCI_VERSION = "1.0.2"
NOBODY = 65534
CPU_PERIOD_US = 100_000
TMP_SIZE = "64m"
CGROUP_PARENT = "/nex"
# Directories the runtime mounts over: they must exist in the read-only rootfs,
# because the mapped root of the user namespace cannot create them in a host-owned dir.
MOUNT_POINTS = ("proc", "dev", "tmp")

_MASKED = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/proc/sys/kernel/core_pattern",
]
_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


@dataclass(frozen=True)
class BindMount:
    """A host path bound into the container; read-only unless said otherwise.

    The runtime mounts it from inside the user namespace: like the rootfs, every
    directory above ``source`` must be searchable by others on the host.
    """

    source: Path
    destination: str
    readonly: bool = True


@dataclass(frozen=True)
class ContainerSpec:
    """One container: ``user=None`` runs as nobody inside the user namespace.

    ``user=(uid, gid)`` picks container ids (0 is the namespace's root, still
    without capabilities and mapped to an unprivileged host uid). ``id_base`` is the
    host id container id 0 maps to: the start of the container's own range.
    """

    id: str
    rootfs: Path
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    limits: Limits = field(default_factory=Limits)
    network: NetworkMode = NetworkMode.NONE
    user: tuple[int, int] | None = None
    readonly_root: bool = True
    mounts: list[BindMount] = field(default_factory=list)
    hostname: str = "nex"
    id_base: int = HOST_ID_BASE

    def __post_init__(self) -> None:
        if not self.args:
            raise ValueError("a container needs at least one argument: the program")
        if self.user is not None and not all(0 <= i < ID_RANGE for i in self.user):
            raise ValueError(f"user {self.user} is outside the mapped range 0-{ID_RANGE - 1}")

    @property
    def cgroups_path(self) -> str:
        return f"{CGROUP_PARENT}/{self.id}"


def resources(limits: Limits) -> dict[str, Any]:
    """The cgroup part of the spec: memory, CPU quota and pids from the workload's limits."""
    res: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if limits.memory_mib is not None:
        res["memory"] = {"limit": limits.memory_mib << 20}
    if limits.cpus is not None:
        res["cpu"] = {"period": CPU_PERIOD_US, "quota": max(1000, round(limits.cpus * CPU_PERIOD_US))}
    if limits.pids is not None:
        res["pids"] = {"limit": limits.pids}
    return res


def _mounts(spec: ContainerSpec) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777", f"size={TMP_SIZE}"]},
    ]
    for bind in spec.mounts:
        options = ["rbind", "nosuid", "nodev", "ro" if bind.readonly else "rw"]
        mounts.append({"destination": bind.destination, "type": "bind",
                       "source": str(bind.source), "options": options})
    return mounts


@dataclass(frozen=True)
class BundleOptions:
    """What a runtime needs of a bundle beyond its spec (runc: the defaults; runsc:
    :func:`nex.sandbox.gvisor.GvisorSettings.bundle_options`, which says why)."""

    pids_rlimit: bool = False
    """The pids limit is also the process's ``RLIMIT_NPROC``."""
    user_namespace: bool = True
    """A user namespace mapping the container's ids to its host range."""
    clone3_enosys: bool = True
    """A seccomp rule answering clone3 with ENOSYS (so that libc falls back to clone)."""


def config(spec: ContainerSpec, options: BundleOptions = BundleOptions()) -> dict[str, Any]:
    """The config.json of ``spec`` as a dict."""
    rlimits = [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}]
    user_namespace = options.user_namespace
    if options.pids_rlimit and spec.limits.pids is not None:
        rlimits.append({"type": "RLIMIT_NPROC", "hard": spec.limits.pids, "soft": spec.limits.pids})
    uid, gid = spec.user if spec.user is not None else (NOBODY, NOBODY)
    namespaces = [{"type": t} for t in ("pid", "mount", "ipc", "uts", *(["user"] if user_namespace else []))]
    if spec.network == NetworkMode.NONE:
        namespaces.append({"type": "network"})
    id_map = [{"containerID": 0, "hostID": spec.id_base, "size": ID_RANGE}]
    no_caps: dict[str, list[str]] = {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")}
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid, "additionalGids": []},
            "args": list(spec.args),
            "env": [f"{k}={v}" for k, v in spec.env.items()],
            "cwd": spec.cwd,
            "capabilities": no_caps,
            "rlimits": rlimits,
            "noNewPrivileges": True,
        },
        "root": {"path": str(spec.rootfs), "readonly": spec.readonly_root},
        "hostname": spec.hostname,
        "mounts": _mounts(spec),
        "linux": {
            **({"uidMappings": id_map, "gidMappings": id_map} if user_namespace else {}),
            "namespaces": namespaces,
            "cgroupsPath": spec.cgroups_path,
            "resources": resources(spec.limits),
            "seccomp": default_profile(clone3_enosys=options.clone3_enosys),
            "maskedPaths": _MASKED,
            "readonlyPaths": _READONLY,
        },
    }


def write_bundle(spec: ContainerSpec, bundle_dir: Path, options: BundleOptions = BundleOptions()) -> Path:
    """Write ``bundle_dir/config.json`` for ``spec`` (whose rootfs must exist); returns its path."""
    bundle_dir.mkdir(parents=True, exist_ok=True)
    for name in MOUNT_POINTS:
        mount_point = spec.rootfs / name
        if not mount_point.exists():
            mount_point.mkdir()
            # runc gives a tmpfs the mode of the directory it covers.
            mount_point.chmod(0o1777 if name == "tmp" else 0o755)
    path = bundle_dir / "config.json"
    # It holds the workload's environment, opened secrets included: owner-only.
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(config(spec, options), indent=1))
    return path
