"""Idmapped, read-only bind mounts: one unpacked image seen by each container as its own.

An image is unpacked once, with the ids its layers give, in a directory only root
can enter. Each container gets a bind mount of that tree on its bundle's rootfs,
idmapped so that id N on disk shows as ``base + N`` (the container's own host
range, :mod:`nex.sandbox.idranges`), read-only, nosuid and nodev. runc 1.1 has no
idmapped mounts of its own, so the node makes them (``open_tree`` +
``mount_setattr(MOUNT_ATTR_IDMAP)`` + ``move_mount``, Linux 5.12 and later, on a
file system that supports them: ext4, xfs, btrfs, tmpfs since 6.3) and removes
them when the container ends, or at the next start when a node died.

The user namespace an idmap needs is made by a short-lived child (``unshare
--user cat``, which waits on its stdin) whose maps the node writes; the mount keeps
the namespace alive, the child is killed at once.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import subprocess
import time
from pathlib import Path

_SYSCALLS = {  # (open_tree, move_mount, mount_setattr); the same on every architecture since 5.2
    "x86_64": (428, 429, 442), "aarch64": (428, 429, 442),
}
NAMESPACE_TIMEOUT_S = 5.0
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_IDMAP = 0x100000
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8
_OCTAL = re.compile(r"\\([0-7]{3})")

_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


def _syscalls() -> tuple[int, int, int]:
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        raise OSError(f"idmapped mounts are not wired for {platform.machine()}")
    return numbers


def user_namespace(base: int, size: int) -> int:
    """An fd of a new user namespace that maps ids 0..size-1 to host ``base`` and up."""
    # `unshare --user cat`, spawned without a fork of the node (no preexec hook): about 2 ms,
    # where a fork of a node-sized process costs several.
    own = os.readlink("/proc/self/ns/user")
    child = subprocess.Popen(["unshare", "--user", "cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, close_fds=True)
    try:
        delay, deadline = 0.0002, time.monotonic() + NAMESPACE_TIMEOUT_S
        while os.readlink(f"/proc/{child.pid}/ns/user") == own:  # until unshare(2) has run
            if child.poll() is not None or time.monotonic() > deadline:
                raise OSError(f"unshare --user did not make a user namespace (exit {child.returncode})")
            time.sleep(delay)
            delay = min(2 * delay, 0.005)
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{child.pid}/{name}", "w") as f:
                f.write(f"0 {base} {size}\n")
        return os.open(f"/proc/{child.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        child.kill()
        child.wait()


def mount_idmapped(source: Path, target: Path, base: int, size: int, nosuid_nodev: bool = True) -> None:
    """Bind ``source`` on ``target``, read-only, nosuid, nodev, with ids shifted by ``base``.

    ``nosuid_nodev=False`` for gVisor: its gofer remounts the rootfs read-only from inside the
    user namespace, which the kernel refuses (EPERM) on a mount whose nosuid and nodev are locked.
    gVisor's own kernel applies setuid and device semantics there, and the bundle that holds the
    mount is entered only by root and the container's range.
    """
    open_tree, move_mount, mount_setattr = _syscalls()
    tree = _check(_libc.syscall(open_tree, AT_FDCWD, os.fsencode(source),
                                OPEN_TREE_CLONE | os.O_CLOEXEC | AT_RECURSIVE), "open_tree")
    try:
        userns = user_namespace(base, size)
        try:
            flags = MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY
            if nosuid_nodev:
                flags |= MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
            attr = _MountAttr(flags, 0, 0, userns)
            _check(_libc.syscall(mount_setattr, tree, b"", AT_EMPTY_PATH | AT_RECURSIVE,
                                 ctypes.byref(attr), ctypes.sizeof(attr)), "mount_setattr")
        finally:
            os.close(userns)
        _check(_libc.syscall(move_mount, tree, b"", AT_FDCWD, os.fsencode(target),
                             MOVE_MOUNT_F_EMPTY_PATH), "move_mount")
    finally:
        os.close(tree)


def is_mount(path: Path) -> bool:
    """Whether something is mounted on ``path`` (os.path.ismount misses binds within one file system)."""
    wanted = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), point)  # spaces and such are escaped
            if point == wanted:
                return True
    return False


def unmount(path: Path) -> None:
    """Detach whatever is mounted on ``path`` (lazily: a process still inside keeps its view)."""
    while is_mount(path):
        if _libc.umount2(os.fsencode(path), MNT_DETACH | UMOUNT_NOFOLLOW) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"umount {path}: {os.strerror(errno)}")
