"""The contract every runtime implements.

A runtime runs one type of workload (native, javascript, ...). The supervisor is
the only caller; the control service, feeds and placement never import a runtime.

Contract, for every implementation:

- ``prepare(spec)`` checks that the artifact can run (format, compile) without
  starting anything; it raises :class:`nex.api.errors.BadArtifact` otherwise. It
  returns warnings: what the user should know about an artifact that runs here but
  depends on the host (a dynamically linked executable on a node without a sandbox);
  the deploy's reply carries them.
- ``start(spec, logs)`` returns a :class:`Handle` only once the workload runs (a
  process exists, a function is subscribed to its triggers). A failure raises and
  leaves nothing behind.
- ``wait(handle)`` returns the :class:`ExitResult` when the workload ends, on its
  own or because it was stopped. Exit is data, never an exception.
- ``stop(handle, grace)`` asks the workload to end (SIGTERM or equivalent), forces
  it after ``grace`` seconds, and returns once it has ended. Stopping twice is harmless.
- ``cleanup(handle)`` removes what a handle left behind by a node that died
  (recorded handles are replayed on the next start). It must not need the process
  that started the workload: a fresh instance cleans up after another. A handle of
  another version (``Handle.version``) is refused with :class:`IncompatibleHandle`,
  touching nothing: its data may mean something else.
- ``sweep(workload_id)`` removes what a workload left when its handle cannot be read
  (another version of nex wrote it), from the id alone: so an upgrade leaves no orphans.
- ``inspect(handle)`` returns what the runtime knows of a running workload.
- ``close()`` releases everything the runtime started: its agents, and any workload
  still running (killed; the supervisor stops them in order before). Closing twice is harmless.

What the supervisor needs beyond workloads is here too, so that it never asks what
class a runtime is: ``warm()`` starts what the runtime keeps ahead of its first
workload (an agent), ``refresh_stats()`` fetches fresh counters for ``inspect()``,
``agents_up()`` names the helper processes it keeps and whether each runs. A runtime
that keeps none does nothing and returns ``{}``. What a runtime supports is in its
:class:`Capabilities`.

Every runtime of :mod:`nex.runtimes.registry` passes tests/test_runtime_conformance.py,
which checks this contract on real processes, containers and agents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from nex.agent.protocol import HostSettings
from nex.api.models import Lifecycle, Limits, NetworkMode, Trigger, WorkloadType
from nex.connection import ConnectOptions
from nex.types import ExitResult, LogSink, NoGuard, ProcessGuard

if TYPE_CHECKING:
    from nex.sandbox.runner import OciRunner
    from nex.security.natsauth import WorkloadCredentials

__all__ = [
    "HANDLE_VERSION", "Capabilities", "ExitResult", "Handle", "IncompatibleHandle", "LogSink", "NoGuard",
    "ProcessGuard", "Runtime", "RuntimeContext", "WithoutAgent", "WorkloadSpec",
]

HANDLE_VERSION = 1


class IncompatibleHandle(Exception):
    """A handle written by another version of nex: its data is not read (see ``Runtime.sweep``)."""

    def __init__(self, handle: Handle) -> None:
        super().__init__(f"the handle of workload {handle.workload_id} has version {handle.version}; "
                         f"this nex reads version {HANDLE_VERSION}")
        self.workload_id = handle.workload_id
        self.version = handle.version


@dataclass(frozen=True)
class Capabilities:
    lifecycles: frozenset[Lifecycle]
    invocable: bool = False
    sandboxed: bool = False
    # Its workloads can outlive a node that dies (processes, containers): the supervisor keeps
    # a handle on disk for the next node to clean up with. Functions die with their agent.
    outlives_node: bool = True


@dataclass(frozen=True)
class WorkloadSpec:
    """What a runtime needs to run one workload, artifact already fetched and verified."""

    id: str
    name: str
    namespace: str
    type: WorkloadType
    lifecycle: Lifecycle
    artifact_path: Path
    work_dir: Path
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    triggers: list[Trigger] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    network: NetworkMode | None = None

    def queue_group(self, trigger: Trigger) -> str:
        # Copies of a function (same namespace and name) on any node share one group.
        return trigger.queue or f"nex.{self.namespace}.{self.name}"


@dataclass(frozen=True)
class Handle:
    """Versioned, serialisable state of a running workload, kept on disk by the supervisor."""

    workload_id: str
    type: WorkloadType
    data: dict[str, Any]
    version: int = HANDLE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "workload_id": self.workload_id,
                "type": self.type.value, "data": self.data}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Handle:
        """Any version: the envelope (id, type, version) is the same in all; ``data`` is not read."""
        return cls(workload_id=raw["workload_id"], type=WorkloadType(raw["type"]),
                   data=dict(raw["data"]), version=int(raw["version"]))

    def require_current(self) -> None:
        """Raise IncompatibleHandle unless this version of nex wrote the handle."""
        if self.version != HANDLE_VERSION:
            raise IncompatibleHandle(self)


@dataclass(frozen=True)
class RuntimeContext:
    """What the node gives every runtime."""

    node_id: str
    state_dir: Path
    connect_options: ConnectOptions
    guard: ProcessGuard = field(default_factory=NoGuard)
    oci: OciRunner | None = None  # the node's detected OCI runtime; None: no sandbox
    credentials: WorkloadCredentials | None = None  # mints each workload's NATS identity; None: no auth
    host_settings: HostSettings = field(default_factory=HostSettings)  # functions' host services
    image_budget_bytes: int = 10 << 30  # disk for unpacked OCI images (NodeConfig.image_disk_budget_bytes)


@runtime_checkable
class Runtime(Protocol):
    type: WorkloadType
    capabilities: Capabilities

    async def prepare(self, spec: WorkloadSpec) -> list[str]: ...

    async def start(self, spec: WorkloadSpec, logs: LogSink) -> Handle: ...

    async def wait(self, handle: Handle) -> ExitResult: ...

    async def stop(self, handle: Handle, grace: float) -> None: ...

    async def cleanup(self, handle: Handle) -> None: ...

    async def sweep(self, workload_id: str) -> None: ...

    def inspect(self, handle: Handle) -> dict[str, Any]: ...

    async def close(self) -> None: ...

    async def warm(self) -> None: ...

    async def refresh_stats(self) -> None: ...

    def agents_up(self) -> dict[str, bool]: ...


class WithoutAgent:
    """The part of :class:`Runtime` a runtime with no agent process has nothing to do for:
    nothing to start ahead, no counters to fetch, no agent to report."""

    async def warm(self) -> None:
        """Nothing starts ahead of a workload."""

    async def refresh_stats(self) -> None:
        """``inspect`` reads what it reports when asked."""

    def agents_up(self) -> dict[str, bool]:
        return {}
