"""gVisor (``runsc``): the flags a sandbox runs with, and what a workload's limits mean under it.

runsc runs the same bundle as runc, but the workload's system calls go to gVisor's
own kernel (the Sentry, a process on the host) instead of the host's. What differs
for Nex, measured with Debian's runsc (release 2022-12-19):

- **The platform** (how the Sentry intercepts the guest's system calls) is a flag.
  ``systrap`` is unknown to that release and ``kvm`` hangs on a nested host, so the
  node tries :data:`PLATFORMS` in order and keeps the first that runs a container;
  ``kvm`` only when configured (``gvisor_platform``).
- **Seccomp**: runsc applies the bundle's seccomp profile inside the sandbox only with
  ``--oci-seccomp``; without it this release also shows the guest every capability.
- **The network** is a flag too: ``--network=none`` (loopback only) or ``host``.
- **Cgroups count gVisor itself.** The Sentry, the gofer and the ptrace stubs are
  host tasks in the workload's cgroup: about 26 tasks and 13 MiB for a guest of one
  process, and about five tasks for each more guest process. A pids limit of 16 on
  the cgroup never starts; a guest forking to the cgroup's limit takes down the
  whole sandbox. So :func:`host_limits` gives the cgroup headroom, and the guest's
  own pids limit is ``RLIMIT_NPROC`` inside the sandbox, which gVisor enforces:
  ``fork`` fails with EAGAIN there, as at a cgroup pids limit under runc.
- **A memory limit kills the whole sandbox** (the host's OOM killer takes the Sentry):
  the guest's memory and the Sentry's count together, with :data:`MEMORY_HEADROOM_MIB`
  added for the Sentry.
- **The cgroup is the node's**: runsc joins a cgroup that exists, sets nothing in it
  and leaves it in place, so the node makes it (with the limits above) before the
  start, reads its OOM counter after the end, and removes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from nex.api.models import Limits, NetworkMode
from nex.sandbox.bundle import CPU_PERIOD_US, BundleOptions
from nex.sandbox.cgroups import HostLimits

RUNSC = "runsc"
PLATFORMS = ("systrap", "ptrace")
KNOWN_PLATFORMS = ("systrap", "ptrace", "kvm")
MEMORY_HEADROOM_MIB = 48
"""Added to ``memory_mib`` for gVisor's own kernel and gofer (an idle sandbox holds about 13 MiB)."""
PIDS_BASE = 64
PIDS_PER_TASK = 8
"""The cgroup's pids limit is ``PIDS_BASE + PIDS_PER_TASK * pids``: gVisor's own tasks (about 26)
and its ptrace stubs (about five per guest process) with room to spare. The guest never reaches
it: ``RLIMIT_NPROC`` stops its forks at ``pids``."""


@dataclass(frozen=True)
class GvisorSettings:
    """How the node runs runsc: the platform (``ptrace``, ``systrap`` or ``kvm``)."""

    platform: str

    def flags(self, network: NetworkMode | None = None) -> list[str]:
        """runsc's global flags for a sandbox of this network mode."""
        net = "host" if network == NetworkMode.HOST else "none"
        return [f"--platform={self.platform}", f"--network={net}", "--oci-seccomp"]

    @staticmethod
    def bundle_options(network: NetworkMode | None = None) -> BundleOptions:
        """What a bundle needs under runsc.

        - the pids limit as ``RLIMIT_NPROC``: the guest's own limit (the cgroup's has headroom);
        - no user namespace with the host's network: this runsc fails to set up its sandbox's
          chroot in one ("error converting mounts"). Its kernel still runs as host nobody in a
          user namespace of its own; its gofer then runs as host root, as under Docker;
        - no clone3 rule: gVisor's seccomp answers the rule's ENOSYS as EPERM, and glibc's
          pthread_create does not fall back to clone on EPERM (tested: no thread started).
        """
        return BundleOptions(pids_rlimit=True, user_namespace=network != NetworkMode.HOST, clone3_enosys=False)


def host_limits(limits: Limits) -> HostLimits:
    """The cgroup's limits for a sandbox whose guest has ``limits``: with gVisor's headroom."""
    return HostLimits(
        memory_bytes=(limits.memory_mib + MEMORY_HEADROOM_MIB) << 20 if limits.memory_mib is not None else None,
        pids=PIDS_BASE + PIDS_PER_TASK * limits.pids if limits.pids is not None else None,
        cpu_quota_us=max(1000, round(limits.cpus * CPU_PERIOD_US)) if limits.cpus is not None else None,
        cpu_period_us=CPU_PERIOD_US,
    )
