"""What an unpacked image may keep, and how much disk it takes.

``umoci unpack`` runs as root and restores what the layers say: device nodes,
setuid and setgid bits, file capabilities. None of it is needed by a container
(its /dev is a tmpfs the runtime fills, it runs with ``noNewPrivileges`` and no
capabilities) and each is a way into the host for whoever can reach the tree, so
:func:`sanitize_tree` removes them:

- character and block devices: removed;
- FIFOs and sockets: removed. Harmless to the host, but one image's rootfs is shared
  by every container of that image, so a FIFO in it would be one pipe between
  workloads of different tenants; programs make theirs in /tmp at run time;
- setuid and setgid bits: cleared, on files and directories;
- the ``security.capability`` xattr (file capabilities): removed.

Symlinks are never followed; hard links to outside the tree are refused by umoci.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

CAPABILITY_XATTR = "security.capability"
_DROPPED = {stat.S_IFCHR: "device", stat.S_IFBLK: "device", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}


@dataclass
class TreeReport:
    bytes: int = 0  # disk used (allocated blocks), hard links once
    dropped: dict[str, int] = field(default_factory=dict)  # "device", "setuid", ... -> how many

    def count(self, what: str) -> None:
        self.dropped[what] = self.dropped.get(what, 0) + 1


def _entries(root: str):
    """(path, lstat) of every entry under ``root`` and ``root`` itself; never through a symlink.

    Entries that vanish while walked (a tree still being written) are skipped.
    """
    try:
        yield root, os.lstat(root)
    except FileNotFoundError:
        return
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISDIR(info.st_mode):
                        stack.append(entry.path)
                    yield entry.path, info
        except (FileNotFoundError, NotADirectoryError):
            continue


def tree_bytes(root: str) -> int:
    """Disk used by the tree under ``root``: allocated blocks, hard links counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for _, info in _entries(root):
        if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
            key = (info.st_dev, info.st_ino)
            if key in seen:
                continue
            seen.add(key)
        total += info.st_blocks * 512
    return total


def sanitize_tree(root: str) -> TreeReport:
    """Remove from the tree under ``root`` what must not reach the host (see the module doc)."""
    report = TreeReport()
    seen: set[tuple[int, int]] = set()
    for path, info in _entries(root):
        kind = stat.S_IFMT(info.st_mode)
        if kind in _DROPPED:
            os.unlink(path)
            report.count(_DROPPED[kind])
            continue
        if kind not in (stat.S_IFREG, stat.S_IFDIR):
            report.bytes += info.st_blocks * 512  # a symlink: never followed, never changed
            continue
        if info.st_nlink > 1 and kind == stat.S_IFREG:
            key = (info.st_dev, info.st_ino)
            if key in seen:
                continue
            seen.add(key)
        report.bytes += info.st_blocks * 512
        special = info.st_mode & (stat.S_ISUID | stat.S_ISGID)
        if special:
            # Not a symlink (lstat said so), and nothing but this node writes the tree.
            os.chmod(path, stat.S_IMODE(info.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
            report.count("setuid" if special & stat.S_ISUID else "setgid")
        if kind == stat.S_IFREG:
            try:
                os.removexattr(path, CAPABILITY_XATTR, follow_symlinks=False)
                report.count("capabilities")
            except OSError as exc:
                if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                    raise
    return report
