"""The reaper: a tiny process that outlives a killed node just long enough to kill its workloads.

PR_SET_PDEATHSIG kills a workload's first process when the node dies, but not
what that process forked. The node therefore starts one reaper, in a session of
its own, and tells it through a pipe which process groups it runs (``+PGID`` and
``-PGID`` lines). When the pipe closes (the node exited or was SIGKILLed) the
reaper sends SIGKILL to every group still listed, then exits.

``python -m nex.reaper`` is the reaper; :class:`Reaper` is the node's side.
Standard library only, so the process stays small.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


class Reaper:
    """The node's handle on its reaper process."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "nex.reaper"], stdin=subprocess.PIPE,
            start_new_session=True, close_fds=True,
        )

    def _send(self, line: str) -> None:
        if self._process.stdin is None or self._process.stdin.closed:
            return
        try:
            self._process.stdin.write(line.encode())
            self._process.stdin.flush()
        except BrokenPipeError:
            pass

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def release(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    def close(self) -> None:
        """Clean shutdown: the reaper kills what is still listed (nothing, normally) and exits."""
        if self._process.stdin is not None and not self._process.stdin.closed:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    @property
    def pid(self) -> int:
        return self._process.pid


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    groups: set[int] = set()
    for raw in sys.stdin.buffer:
        line = raw.strip()
        if line[:1] in (b"+", b"-") and line[1:].isdigit():
            pgid = int(line[1:])
            (groups.add if line[:1] == b"+" else groups.discard)(pgid)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


if __name__ == "__main__":
    main()
