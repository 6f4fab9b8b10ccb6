"""The default seccomp profile: a deny-list on top of an allow-by-default filter.

Why a deny-list: native workloads are arbitrary static executables, and an
allow-list (Docker's has ~350 entries) breaks programs on the first syscall it
forgot. Inside the sandbox the process already has no capabilities and lives in a
user namespace, so most privileged calls fail anyway; the filter takes away the
kernel interfaces that stay reachable without privileges and have a history of
exploits or leak the host: new namespaces (unshare, setns, clone with a CLONE_NEW*
flag), keyrings, bpf, perf_event_open, userfaultfd, io_uring, ptrace and
cross-process memory access, kernel modules, kexec, mounting, time setting,
reboot, swap, quotas, handles to host files. A denied call fails with EPERM
(clone3 with ENOSYS, so that libc falls back to clone, whose flags the filter
can see). Every ABI of the machine is covered, so a 32-bit syscall cannot get round it.
"""

from __future__ import annotations

import errno
import os
from typing import Any

DENIED = sorted({
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
    "delete_module", "fanotify_init", "finit_module", "fsconfig", "fsmount", "fsopen", "fspick",
    "get_kernel_syms", "get_mempolicy", "init_module", "io_uring_enter", "io_uring_register",
    "io_uring_setup", "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl",
    "lookup_dcookie", "mbind", "mount", "mount_setattr", "move_mount", "move_pages",
    "name_to_handle_at", "nfsservctl", "open_by_handle_at", "open_tree", "perf_event_open",
    "pivot_root", "process_vm_readv", "process_vm_writev", "ptrace", "query_module", "quotactl",
    "reboot", "request_key", "set_mempolicy", "setns", "settimeofday", "stime", "swapoff",
    "swapon", "syslog", "umount", "umount2", "unshare", "uselib", "userfaultfd", "ustat",
    "vhangup", "vm86", "vm86old", "_sysctl", "sysfs",
})

# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET. (CLONE_NEWTIME shares
# its bit with the exit signal of clone(); only clone3 and unshare take it, both denied.)
CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
                         0x20000000, 0x40000000)

ARCHITECTURES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}


def default_profile(machine: str | None = None, clone3_enosys: bool = True) -> dict[str, Any]:
    """The ``linux.seccomp`` object of an OCI config.

    ``clone3_enosys=False`` leaves clone3 to the kernel that runs the container: gVisor's
    answers it itself (ENOSYS in runsc 2022-12-19), and applies a rule's ``errnoRet`` as EPERM,
    on which libc does not fall back to clone, so no thread could start.
    """
    syscalls: list[dict[str, Any]] = [
        {"names": DENIED, "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM},
    ]
    if clone3_enosys:
        syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
    # One rule per flag: rules are OR-ed, the conditions within a rule AND-ed.
    for flag in CLONE_NAMESPACE_FLAGS:
        syscalls.append({
            "names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM,
            "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
        })
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ARCHITECTURES.get(machine or os.uname().machine, []),
        "syscalls": syscalls,
    }
