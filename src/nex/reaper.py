"""The reaper: a tiny process that outlives a killed node just long enough to kill its workloads.

PR_SET_PDEATHSIG kills a workload's first process when the node dies, but not
what that process forked. The node therefore starts one reaper, in a session of
its own, and tells it through a pipe which process groups it runs (``+PGID`` and
``-PGID`` lines). When the pipe closes (the node exited or was SIGKILLed) the
reaper sends SIGKILL to every group still listed, then exits.

Sandboxed workloads are containers, whose processes are no child of the node:
``+C<runtime>\t<root>\t<id>`` lists one, and the reaper removes what is still
listed with ``<runtime> --root <root> delete --force <id>``, which kills every
process of the container's cgroup and removes the cgroup. A gVisor sandbox's cgroup
is the node's, not runsc's: the reaper then removes ``/nex/<id>`` from every cgroup
hierarchy itself, killing what is left in it.

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
    for _, _, container_id in containers:
        _remove_cgroup(f"nex/{container_id}")


def _cgroup_mounts() -> list[str]:
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        fields = line.split()
        if "-" in fields and fields[fields.index("-") + 1] in ("cgroup", "cgroup2"):
            mounts.append(fields[4])
    return mounts


def _remove_cgroup(path: str) -> None:
    """Kill what is left in the cgroup ``path`` and remove it, in every hierarchy (a few tries each)."""
    import time

    for mount in _cgroup_mounts():
        directory = os.path.join(mount, path)
        for _ in range(50):
            if not os.path.isdir(directory):
                break
            try:
                with open(os.path.join(directory, "cgroup.procs")) as f:
                    pids = [int(p) for p in f.read().split()]
            except (OSError, ValueError):
                pids = []
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)


if __name__ == "__main__":
    main()
