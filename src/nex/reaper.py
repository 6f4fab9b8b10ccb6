"""The reaper: a tiny process that outlives a killed node just long enough to kill its workloads.

PR_SET_PDEATHSIG kills a workload's first process when the node dies, but not
what that process forked. The node therefore starts one reaper, in a session of
its own, and tells it through a pipe which process groups it runs (``+PGID`` and
``-PGID`` lines). When the pipe closes (the node exited or was SIGKILLed) the
reaper sends SIGKILL to every group still listed, then exits.

Sandboxed workloads are containers, whose processes are no child of the node:
``+C<runtime>\t<root>\t<id>`` lists one, and the reaper removes what is still
listed with ``<runtime> --root <root> delete --force <id>``, which kills every
process of the container's cgroup and removes the cgroup.

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

    def watch_container(self, runtime: str, root: str, container_id: str) -> None:
        self._send(f"+C{runtime}\t{root}\t{container_id}\n")

    def release_container(self, runtime: str, root: str, container_id: str) -> None:
        self._send(f"-C{runtime}\t{root}\t{container_id}\n")

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
    containers: set[tuple[str, ...]] = set()
    for raw in sys.stdin.buffer:
        line = raw.strip().decode(errors="replace")
        sign, rest = line[:1], line[1:]
        if sign not in ("+", "-"):
            continue
        if rest.isdigit():
            (groups.add if sign == "+" else groups.discard)(int(rest))
        elif rest.startswith("C") and rest.count("\t") == 2:
            entry = tuple(rest[1:].split("\t"))
            (containers.add if sign == "+" else containers.discard)(entry)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    _delete_containers(containers)


def _delete_containers(containers: set[tuple[str, ...]]) -> None:
    removing = []
    for runtime, root, container_id in containers:
        try:
            removing.append(subprocess.Popen(
                [runtime, "--root", root, "delete", "--force", container_id],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        except OSError:
            pass
    for process in removing:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


if __name__ == "__main__":
    main()
