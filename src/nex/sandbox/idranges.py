"""Host uid/gid ranges for containers: one range per container, never two live on one range.

Container ids 0-65535 of slot N map to host ids ``HOST_ID_BASE + N * ID_RANGE`` and
up. A slot is held by an exclusive ``flock`` on ``<directory>/<N>``, so the rule
holds across every node of the host (tests run several), and a node that dies lets
go of its slots with its last file descriptor; the next node takes back those of
its recorded handles (:meth:`IdRanges.claim`) until it has cleaned them up. The
directory is on /run: containers do not outlive a reboot, nor do slots.
"""

from __future__ import annotations

import fcntl
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_runtime_dir

HOST_ID_BASE = 100000
ID_RANGE = 65536
# 100000 + 4096 * 65536 stays below 2**31: ids every tool takes for an ordinary uid.
SLOTS = 4096
DEFAULT_DIRECTORY = Path("/run/nex-id-ranges")


class NoFreeRange(RuntimeError):
    """Every slot is held: as many containers run on this host as there are ranges."""


@dataclass(frozen=True)
class IdRange:
    slot: int

    @property
    def base(self) -> int:
        """The host id of the container's root (uid and gid alike)."""
        return HOST_ID_BASE + self.slot * ID_RANGE

    @property
    def size(self) -> int:
        return ID_RANGE


class IdRanges:
    """The slots this process holds, and taking or giving back one."""

    def __init__(self, directory: Path = DEFAULT_DIRECTORY, slots: int = SLOTS) -> None:
        self.directory = directory
        self.slots = slots
        self._held: dict[int, int] = {}  # slot -> the fd that holds its lock
        self._next = 0
        self._lock = threading.Lock()

    def allocate(self, owner: str) -> IdRange:
        """A range no other live container of this host has; ``owner`` is written in its file."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._lock:
            for step in range(self.slots):
                # Round robin: a slot just given back is the last one taken again.
                slot = (self._next + step) % self.slots
                if slot not in self._held and self._take(slot, owner):
                    self._next = slot + 1
                    return IdRange(slot)
        raise NoFreeRange(f"all {self.slots} uid ranges of this host are in use")

    def claim(self, slot: int, owner: str) -> bool:
        """Hold ``slot`` again (a dead node's container, until cleaned up); False if another holds it."""
        if not 0 <= slot < self.slots:
            return False
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._lock:
            # Held here already: by a live workload of another node in this process, not ours to take.
            return slot not in self._held and self._take(slot, owner)

    def release(self, slot: int) -> None:
        """Give ``slot`` back; harmless when not held. The file stays: unlinking a locked file
        would let two processes lock two different files of one name."""
        with self._lock:
            fd = self._held.pop(slot, None)
        if fd is not None:
            os.close(fd)

    def held(self) -> set[int]:
        with self._lock:
            return set(self._held)

    def _take(self, slot: int, owner: str) -> bool:
        fd = os.open(self.directory / str(slot), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{owner}\n".encode(), 0)
        self._held[slot] = fd
        return True


_host_ranges: IdRanges | None = None


def host_ranges() -> IdRanges:
    """The ranges of this process (one per process: flocks of one process on one file conflict
    between its descriptors, so several nodes in one process still never share a slot)."""
    global _host_ranges
    if _host_ranges is None:
        # Without root no range can be mapped anyway (the sandbox probe fails), but the probe takes one.
        directory = DEFAULT_DIRECTORY if os.geteuid() == 0 else Path(user_runtime_dir("nex")) / "id-ranges"
        _host_ranges = IdRanges(directory)
    return _host_ranges
