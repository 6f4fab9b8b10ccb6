"""Health checks of running workloads: a TCP port that accepts, or a NATS request that is answered.

A workload's check (``DeployRequest.health``) runs every ``interval_ms`` from one interval after
the workload starts (time for a service to open its port) until it stops. ``failures`` consecutive failures make it unhealthy, one success
healthy; until either happens it is unknown. Only verdicts change anything: the caller is told
of each transition (and publishes ``workload_health``, rewrites the node's registry entry).

A sandboxed workload usually has network ``none``: its own, empty network namespace, where
127.0.0.1 is not the host's. A TCP check then connects from inside that namespace: a short-lived
thread enters it with setns(2), creates the socket there (a socket belongs to the namespace it
was created in) and leaves; the connect itself runs on the event loop as for any other check.
Entering a namespace takes CAP_SYS_ADMIN; a node without it refuses such a check at deploy
(:func:`check_supported`) rather than report a healthy service as unhealthy forever.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import threading
from collections.abc import Callable

from nats.aio.client import Client
from nats.errors import Error as NatsError

from nex.api.errors import BadRequest, from_reply
from nex.api.models import Health, HealthCheck, Lifecycle, NetworkMode, WorkloadState
from nex.api.subjects import WorkloadScope
from nex.node.workloads import Workload

log = logging.getLogger(__name__)

CAP_SYS_ADMIN = 21
CLONE_NEWNET = 0x40000000

Transition = Callable[[Workload, Health, str | None], None]
"""Told (workload with its new verdict, the old verdict, why the last probe failed or None) on a change."""


def may_enter_network_namespaces() -> bool:
    """Whether this process has CAP_SYS_ADMIN, which setns(2) into a network namespace needs."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    except OSError:
        pass
    return False


def check_supported(check: HealthCheck | None, lifecycle: Lifecycle, sandboxed: bool,
                    network: NetworkMode | None, scope: WorkloadScope, own_network_stack: bool = False) -> None:
    """Refuse, before anything starts, a check this node could never run, or may not: a nats
    check requests with the node's own connection, so only on a subject the workload may use.

    ``own_network_stack``: the sandbox's network is a stack of its own (gVisor's, in its kernel),
    not a namespace of the host's kernel that a thread could enter."""
    if check is not None and check.nats is not None:
        problem = scope.publish_problem(check.nats)
        if problem is not None:
            raise BadRequest(f"health check: {problem}")
    if check is None or check.tcp is None:
        return
    if lifecycle == Lifecycle.FUNCTION:
        raise BadRequest("a function listens on no TCP port: give it a nats health check, or none")
    if sandboxed and network != NetworkMode.HOST and own_network_stack:
        raise BadRequest("a tcp health check of a service under gVisor needs network host: with network none "
                         "its loopback is gVisor's own network stack, which no host process reaches; use "
                         "network host, a nats check, or none")
    if sandboxed and network != NetworkMode.HOST and not may_enter_network_namespaces():
        raise BadRequest("a tcp health check of a sandboxed workload without host network needs a node "
                         "that may enter its network namespace (CAP_SYS_ADMIN); use network host, "
                         "a nats check, or none")


def _network_namespace(pid: int | str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _socket_in_namespace_of(pid: int) -> socket.socket:
    """A TCP socket created in the network namespace of ``pid``, by a thread that enters it and ends."""
    outcome: list[socket.socket | BaseException] = []

    def enter_and_create() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns into the network of pid {pid}: {os.strerror(code)}")
            finally:
                os.close(fd)
            outcome.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    # A thread of its own: it never returns to the host's namespace, it ends.
    thread = threading.Thread(target=enter_and_create, name=f"netns-{pid}", daemon=True)
    thread.start()
    thread.join()
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


async def probe_tcp(port: int, timeout: float, pid: int | None) -> str | None:
    """None when 127.0.0.1:``port`` accepts within ``timeout``, as seen by ``pid``; else why not."""
    loop = asyncio.get_running_loop()
    try:
        if pid is not None and _network_namespace(pid) not in (None, _network_namespace("self")):
            sock = await loop.run_in_executor(None, _socket_in_namespace_of, pid)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        return f"no socket in the workload's network: {exc.strerror or exc}"
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):  # not wait_for, which may swallow the cancel of stop()
            await loop.sock_connect(sock, ("127.0.0.1", port))
        return None
    except TimeoutError:
        return f"port {port}: no connection within {timeout:g}s"
    except OSError as exc:
        # By its errno: asyncio's own words ("Connect call failed ('127.0.0.1', 8080)") say less.
        return f"port {port}: {os.strerror(exc.errno) if exc.errno else exc.strerror or exc}"
    finally:
        sock.close()


async def probe_nats(nc: Client, subject: str, timeout: float) -> str | None:
    """None when a request on ``subject`` gets a reply without an error header; else why not."""
    try:
        reply = await nc.request(subject, b"", timeout=timeout)
    except NatsError as exc:  # no responders, timeout, connection trouble
        return f"request on {subject}: {type(exc).__name__} {exc}".rstrip()
    error = from_reply(reply.data, reply.headers)
    return None if error is None else f"request on {subject}: error {error.code}: {error.message}"


class HealthChecks:
    """The running checks of one node, one task per checked workload."""

    def __init__(self, nc: Client | None, on_transition: Transition) -> None:
        self._nc = nc
        self._on_transition = on_transition
        self._tasks: dict[str, asyncio.Task] = {}

    def start(self, workload: Workload, pid: Callable[[], int | None]) -> None:
        """Check until :meth:`stop`; ``pid`` is asked before each TCP probe (the process may change)."""
        self.stop(workload.id)
        self._tasks[workload.id] = asyncio.create_task(self._run(workload, pid), name=f"health {workload.id}")

    def stop(self, workload_id: str) -> None:
        task = self._tasks.pop(workload_id, None)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _probe(self, check: HealthCheck, pid: Callable[[], int | None], scope: WorkloadScope) -> str | None:
        timeout = check.timeout_ms / 1000
        if check.tcp is not None:
            return await probe_tcp(check.tcp, timeout, pid())
        if check.nats is not None:
            if self._nc is None:
                return "no NATS connection to check with"
            if not scope.may_publish(check.nats):  # refused at deploy; a recovered workload too
                return f"{check.nats} is outside the workload's subjects: not requested"
            return await probe_nats(self._nc, check.nats, timeout)
        return None

    async def _run(self, workload: Workload, pid: Callable[[], int | None]) -> None:
        check = workload.request.health
        scope = WorkloadScope.of(workload.namespace, (t.subject for t in workload.request.triggers))
        failures = 0
        interval = check.interval_ms / 1000
        await asyncio.sleep(interval)
        while workload.state == WorkloadState.RUNNING:  # besides the cancel: nats-py may swallow one
            problem = await self._probe(check, pid, scope)
            failures = 0 if problem is None else failures + 1
            old = workload.checked
            if problem is None:
                new = Health.HEALTHY
            else:
                new = Health.UNHEALTHY if failures >= check.failures else old
            if new != old:
                workload.checked = new
                if problem is not None:
                    log.info("workload %s is unhealthy: %s", workload.id, problem)
                self._on_transition(workload, old, problem)
            await asyncio.sleep(interval)
