"""One state dir, one node: the lock a node holds on its state dir for its whole life.

Two nodes on one state dir would be one node twice: the same identity, each taking
the other's running workloads for a dead node's leftovers (and killing them), two
nats-servers writing one JetStream store. So a node takes an exclusive flock(2) on
``<state dir>/node.lock`` before anything else reads or writes the dir, and writes
its pid there for the next one to name. The kernel lets the lock go when the
process exits, however it exits: after a SIGKILL the next node takes it and cleans
up what the dead one left. The file itself stays; removing it would let two nodes
lock two different files of the same name.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from nex.node.statedir import MODE

LOCK_FILE = "node.lock"


class StateDirInUse(Exception):
    """Another live process (``pid``, None if it has not written it yet) holds ``state_dir``."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        self.state_dir = state_dir
        self.pid = pid
        holder = f"pid {pid}" if pid is not None else "a process that has not written its pid yet"
        super().__init__(f"state dir {state_dir} is in use by another node ({holder})")


class StateDirLock:
    """The held lock; :meth:`release` (or the process's exit) lets it go."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> StateDirLock:
        """Lock ``state_dir`` (created, as nex.node.statedir wants it, if missing) for this process,
        or raise :class:`StateDirInUse` at once: a node never waits for another to go."""
        state_dir.mkdir(mode=MODE, parents=True, exist_ok=True)
        path = state_dir / LOCK_FILE
        # O_CLOEXEC (os.open's default too): a workload or nats-server that outlives a killed node
        # must not keep its lock. No O_TRUNC: the holder's pid is what a refused node reads.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder_pid(fd)
            os.close(fd)
            raise StateDirInUse(state_dir, pid) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let the lock go; releasing twice is harmless."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.ftruncate(fd, 0)  # still locked: nobody reads a pid that is gone
        os.close(fd)


def _holder_pid(fd: int, attempts: int = 20) -> int | None:
    """The pid the holder wrote; it writes it just after it locks, so an empty file is retried briefly."""
    for _ in range(attempts):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.005)
    return None
