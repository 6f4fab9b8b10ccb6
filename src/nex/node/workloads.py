"""The workload table: what this node runs, in which state."""

from __future__ import annotations

import asyncio
import signal
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

from nex.api.errors import WorkloadNotFound
from nex.api.models import (
    MAX_REASON_CHARS, STDERR_TAIL_LINES, DeployRequest, Health, Usage, WorkloadState, WorkloadSummary,
)
from nex.api.records import ReplicaRecord
from nex.runtimes.base import ExitResult, Handle

ENDED_STATES = frozenset({WorkloadState.STOPPED, WorkloadState.FAILED})

# Ended workloads stay listed (state, exit code) until removed or pushed out by newer ones.
KEEP_ENDED = 200


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Workload:
    id: str
    namespace: str
    request: DeployRequest
    node_id: str
    state: WorkloadState = WorkloadState.STARTING
    started_at: datetime = field(default_factory=utcnow)
    stopped_at: datetime | None = None
    handle: Handle | None = None
    exit: ExitResult | None = None
    watcher: asyncio.Task | None = None
    stats: dict = field(default_factory=dict)
    issuer: str | None = None  # who signed the deploy; only it (or an admin) may stop the workload
    checked: Health = Health.UNKNOWN  # the verdict of its health check (nex.node.health), if it has one
    problem: str | None = None  # what its health check last found wrong, while unhealthy
    # Its last stderr lines, for the summary of a failed workload (the log stream has them all).
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES), repr=False)
    warnings: list[str] = field(default_factory=list)  # what the runtime's prepare() found
    # record() of the last write, and what it was made from: the registry lists every workload at
    # every write, and a workload rarely changes between two.
    _record: tuple[tuple, ReplicaRecord] | None = field(default=None, repr=False, compare=False)

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES

    @property
    def has_check(self) -> bool:
        """Whether a probe (tcp or nats) decides its health, rather than its being alive."""
        check = self.request.health
        return check is not None and (check.tcp is not None or check.nats is not None)

    @property
    def health(self) -> Health | None:
        """None unless running. With a probe, its verdict; without one, healthy while the process
        runs or the function is loaded in its agent (the agent may be restarting)."""
        if self.state != WorkloadState.RUNNING:
            return None
        if self.has_check:
            return self.checked
        return Health.HEALTHY if self.stats.get("running", True) else Health.UNHEALTHY

    @property
    def reason(self) -> str | None:
        """Why it failed, or why it is unhealthy; None while all is well (or once it stopped as asked)."""
        if self.state == WorkloadState.FAILED and self.exit is not None:
            return _cut(describe_failure(self.exit))
        if self.health == Health.UNHEALTHY:
            return _cut(self.problem or "its health check fails")
        return None

    def log_line(self, stream: str, line: bytes) -> None:
        """Keep what it writes on stderr for the summary, should it fail."""
        if stream == "stderr":
            self.stderr_tail.append(line.decode("utf-8", "replace").rstrip("\n")[:MAX_REASON_CHARS])

    def summary(self) -> WorkloadSummary:
        request = self.request
        return WorkloadSummary(
            id=self.id, name=request.name, namespace=self.namespace, type=request.type,
            lifecycle=request.lifecycle, state=self.state, node_id=self.node_id,
            artifact=request.artifact, argv=request.argv, env_keys=sorted(request.env),
            triggers=request.triggers, limits=request.limits, issuer=self.issuer, started_at=self.started_at,
            stopped_at=self.stopped_at, pid=self.stats.get("pid"),
            exit=self.exit.info() if self.exit else None, usage=self.usage(),
            invocations=self.stats.get("invocations"), errors=self.stats.get("errors"),
            rejected=self.stats.get("rejected"),
            health=self.health, app=request.app, reason=self.reason,
            stderr_tail=list(self.stderr_tail) if self.state == WorkloadState.FAILED else None,
            warnings=self.warnings or None,
        )

    def record(self) -> ReplicaRecord:
        """The compact form the node registry lists (docs/operations.md)."""
        made_from = (self.state, self.health, self.exit.exit_code if self.exit else None, self.reason)
        if self._record is None or self._record[0] != made_from:
            request = self.request
            state, health, exit_code, reason = made_from
            self._record = made_from, ReplicaRecord(
                id=self.id, name=request.name, namespace=self.namespace, type=request.type,
                lifecycle=request.lifecycle, state=state, health=health, app=request.app,
                started_at=self.started_at, exit_code=exit_code, reason=reason,
            )
        return self._record[1]

    def usage(self) -> Usage | None:
        """What the runtime last read from the cgroup or process; None once it ended."""
        if self.ended:
            return None
        values = {k: self.stats.get(k) for k in Usage.model_fields}
        return Usage(**values) if any(v is not None for v in values.values()) else None


def describe_failure(result: ExitResult) -> str:
    """How a workload ended, in words: its error, else the signal or the exit code."""
    if result.error:
        return result.error
    if result.oom_killed:
        return "killed: out of memory (its memory limit)"
    if result.signal is not None:
        try:
            name = signal.Signals(result.signal).name
        except ValueError:
            name = f"signal {result.signal}"
        return f"killed by {name}"
    if result.exit_code is not None:
        return f"exited with code {result.exit_code}"
    return "ended"


def _cut(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 1] + "…"


class WorkloadTable:
    """Every workload of the node by id; the ones that have not ended also on their own, so that
    counting them (every bid, ping and registry write does) does not walk the ended ones too."""

    def __init__(self, on_remove: Callable[[Workload], None] = lambda w: None) -> None:
        self._by_id: dict[str, Workload] = {}
        self._active: dict[str, Workload] = {}
        self._ended_count = 0
        self._on_remove = on_remove

    def add(self, workload: Workload) -> None:
        self._by_id[workload.id] = workload
        if workload.ended:
            self._ended_count += 1
        else:
            self._active[workload.id] = workload
        self._forget_oldest_ended()

    def ended(self, workload: Workload) -> None:
        """The supervisor saw ``workload`` end (its state is now stopped or failed)."""
        if self._active.pop(workload.id, None) is not None:
            self._ended_count += 1
            self._forget_oldest_ended()

    def get(self, workload_id: str, namespace: str | None = None) -> Workload:
        workload = self._by_id.get(workload_id)
        if workload is None or (namespace is not None and workload.namespace != namespace):
            raise WorkloadNotFound(workload_id)
        return workload

    def remove(self, workload_id: str) -> None:
        workload = self._by_id.pop(workload_id, None)
        if workload is not None:
            if self._active.pop(workload_id, None) is None:
                self._ended_count -= 1
            self._on_remove(workload)

    def __iter__(self) -> Iterator[Workload]:
        return iter(list(self._by_id.values()))

    def in_namespace(self, namespace: str) -> list[Workload]:
        return [w for w in self if w.namespace == namespace]

    def active(self) -> list[Workload]:
        return list(self._active.values())

    def active_count(self) -> int:
        return len(self._active)

    def _forget_oldest_ended(self) -> None:
        if self._ended_count <= KEEP_ENDED:
            return
        ended = [w for w in self._by_id.values() if w.id not in self._active]
        overflow = len(ended) - KEEP_ENDED
        if overflow > 0:
            ended.sort(key=lambda w: w.stopped_at or w.started_at)
            for workload in ended[:overflow]:
                self.remove(workload.id)
