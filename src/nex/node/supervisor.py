"""The supervisor: the one place that drives runtimes.

It fetches and verifies artifacts, starts workloads through their runtime,
watches them until they end, runs their health checks, records handles on disk
so a later node can clean up after a dead one, and reports every change as an
event and to ``on_changed`` (the node rewrites its registry entry soon after).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

from nats.aio.client import Client

from nex.api.errors import BadRequest, Conflict, NexError
from nex.api.events import EventType
from nex.api.models import DeployRequest, Health, Isolation, Lifecycle, WorkloadState, WorkloadType
from nex.api.records import ReplicaRecord
from nex.api.subjects import WorkloadScope
from nex.artifacts import ArtifactCache
from nex.node.feeds import Feeds
from nex.node.health import HealthChecks, check_supported
from nex.node.workloads import Workload, WorkloadTable, utcnow
from nex.runtimes.base import ExitResult, Handle, IncompatibleHandle, Runtime, WorkloadSpec

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(
        self,
        node_id: str,
        state_dir: Path,
        runtimes: dict[WorkloadType, Runtime],
        artifacts: ArtifactCache,
        feeds: Feeds,
        on_removed: Callable[[Workload], None] = lambda w: None,
        *,
        nc: Client | None = None,
        on_changed: Callable[[], None] = lambda: None,
        isolation: Isolation = Isolation.PROCESS,
    ) -> None:
        self.node_id = node_id
        self.isolation = isolation
        self._health = HealthChecks(nc, self._health_changed)  # nats checks request through ``nc``
        self._on_changed = on_changed
        self._runtimes = runtimes
        self._artifacts = artifacts
        self._feeds = feeds
        self.table = WorkloadTable(on_remove=self._removed)
        self._on_removed = on_removed
        self._handles_dir = state_dir / "handles"
        self._work_root = state_dir / "workloads"
        self._handles_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._work_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.accepting = True

    @property
    def runtime_types(self) -> list[WorkloadType]:
        return list(self._runtimes)

    # -- deploy and undeploy -------------------------------------------------

    async def deploy(self, namespace: str, request: DeployRequest) -> Workload:
        if not self.accepting:
            raise Conflict(f"node {self.node_id} is in lame duck mode and takes no new workloads")
        runtime = self._runtimes.get(request.type)
        if runtime is None:
            raise BadRequest(f"this node does not run {request.type} workloads")
        if request.lifecycle not in runtime.capabilities.lifecycles:
            raise BadRequest(f"{request.type} workloads cannot have lifecycle {request.lifecycle}")
        if not self.isolation.meets(request.isolation):
            raise BadRequest(f"this node isolates workloads as {self.isolation.value} (its nex.isolation tag); "
                             f"the workload requires at least {request.isolation}: deploy it by auction, or to "
                             f"a node of that tier")
        check_supported(request.health, request.lifecycle, runtime.capabilities.sandboxed, request.network,
                        WorkloadScope.of(namespace, (t.subject for t in request.triggers)),
                        own_network_stack=self.isolation == Isolation.GVISOR)
        artifact_path = await self._artifacts.fetch(request.artifact)
        # Random, not sequential: ids differ from their first characters, so prefixes work in the CLI.
        workload_id = secrets.token_hex(10)
        spec = WorkloadSpec(
            id=workload_id, name=request.name, namespace=namespace, type=request.type,
            lifecycle=request.lifecycle, artifact_path=artifact_path,
            work_dir=self._work_root / workload_id, argv=list(request.argv), env=dict(request.env),
            triggers=list(request.triggers), limits=request.limits, network=request.network,
        )
        warnings = await runtime.prepare(spec)
        workload = Workload(id=workload_id, namespace=namespace, request=request, node_id=self.node_id,
                            warnings=warnings)
        self.table.add(workload)
        try:
            workload.handle = await runtime.start(spec, partial(self._log, workload))
        except BaseException:
            self.table.remove(workload_id)
            raise
        if runtime.capabilities.outlives_node:
            self._save_handle(workload.handle)
        workload.state = WorkloadState.RUNNING
        workload.stats = runtime.inspect(workload.handle)
        workload.watcher = asyncio.create_task(self._watch(workload, runtime))
        if workload.has_check:
            self._health.start(workload, lambda: self.refresh(workload).stats.get("pid"))
        started = self._event_data(workload)
        for warning in warnings:
            log.warning("workload %s (%s) in %s: %s", request.name, workload_id, namespace, warning)
        if warnings:
            started["warnings"] = warnings
        self._feeds.event(namespace, EventType.WORKLOAD_STARTED, started, workload_id)
        self._on_changed()
        return workload

    async def undeploy(self, namespace: str, workload_id: str, grace: float) -> Workload:
        """Stop a running workload; a workload that has already ended is removed from the table."""
        workload = self.table.get(workload_id, namespace)
        if workload.ended:
            self.table.remove(workload_id)
            return workload
        await self._stop(workload, grace)
        return workload

    async def _stop(self, workload: Workload, grace: float) -> None:
        if workload.state == WorkloadState.RUNNING:
            workload.state = WorkloadState.STOPPING
            self._health.stop(workload.id)
            self._on_changed()
            await self._runtimes[workload.request.type].stop(workload.handle, grace)
        if workload.watcher is not None:
            await asyncio.shield(workload.watcher)

    async def stop_all(self, grace: float) -> None:
        self.accepting = False
        await asyncio.gather(*(self._stop(w, grace) for w in self.table.active()))

    async def _watch(self, workload: Workload, runtime: Runtime) -> None:
        try:
            result = await runtime.wait(workload.handle)
        except NexError as exc:
            result = ExitResult(error=exc.message)
        self._health.stop(workload.id)
        stopped_on_request = workload.state == WorkloadState.STOPPING
        workload.exit = result
        workload.stopped_at = utcnow()
        workload.stats = {**workload.stats, "pid": None}
        ok = stopped_on_request or result.success
        workload.state = WorkloadState.STOPPED if ok else WorkloadState.FAILED
        self.table.ended(workload)
        self._forget_handle(workload.id)
        event_type = EventType.WORKLOAD_STOPPED if ok else EventType.WORKLOAD_FAILED
        data = {**self._event_data(workload), **result.info().model_dump(), "requested": stopped_on_request}
        self._feeds.event(workload.namespace, event_type, data, workload.id)
        self._on_changed()

    def _log(self, workload: Workload, stream: str, line: bytes) -> None:
        workload.log_line(stream, line)
        self._feeds.log(workload.namespace, workload.id, stream, line)

    def _health_changed(self, workload: Workload, old: Health, reason: str | None) -> None:
        if workload.state != WorkloadState.RUNNING:
            return  # a probe that ended as the workload stopped: its verdict means nothing now
        workload.problem = reason if workload.checked == Health.UNHEALTHY else None
        data = {**self._event_data(workload), "health": workload.checked.value, "previous": old.value}
        if reason is not None:
            data["reason"] = reason
        self._feeds.event(workload.namespace, EventType.WORKLOAD_HEALTH, data, workload.id)
        self._on_changed()

    def _event_data(self, workload: Workload) -> dict:
        return {
            "workload_id": workload.id, "name": workload.request.name,
            "namespace": workload.namespace, "type": workload.request.type.value,
            "lifecycle": workload.request.lifecycle.value, "node_id": self.node_id,
            "state": workload.state.value,
        }

    def _removed(self, workload: Workload) -> None:
        shutil.rmtree(self._work_root / workload.id, ignore_errors=True)
        self._on_removed(workload)
        self._on_changed()

    # -- inspection ------------------------------------------------------------

    def refresh(self, workload: Workload) -> Workload:
        if workload.handle is not None and not workload.ended:
            workload.stats = self._runtimes[workload.request.type].inspect(workload.handle)
        return workload

    async def refresh_function_stats(self) -> None:
        """Ask every runtime for fresh counters now (a function's inspect() answers from the last ones)."""
        await asyncio.gather(*(runtime.refresh_stats() for runtime in self._runtimes.values()))

    async def warm_agents(self) -> None:
        """Start what every runtime keeps ahead of its first workload (the function agents) now."""
        await asyncio.gather(*(runtime.warm() for runtime in self._runtimes.values()))

    def agents_up(self) -> dict[str, bool]:
        """Whether each agent process of the runtimes runs (with the node, or with its first
        function when the node keeps its agents cold)."""
        return {name: up for runtime in self._runtimes.values() for name, up in runtime.agents_up().items()}

    def app_records(self) -> list[ReplicaRecord]:
        """The app replicas as the node registry lists them (by id), written often: only functions
        are inspected afresh (whether the agent has them loaded is their health); reading the
        usage of every service's cgroup would be wasted here. Other workloads are only counted:
        the reconciler has no use for them, and a node with thousands stays small."""
        replicas = sorted((w for w in self.table if w.request.app is not None), key=lambda w: w.id)
        return [(self.refresh(w) if w.request.lifecycle == Lifecycle.FUNCTION else w).record() for w in replicas]

    # -- handles on disk: what a node that dies leaves for the next one ----------

    def _handle_path(self, workload_id: str) -> Path:
        return self._handles_dir / f"{workload_id}.json"

    def _save_handle(self, handle: Handle) -> None:
        path = self._handle_path(handle.workload_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(handle.to_dict()))
        tmp.replace(path)

    def _forget_handle(self, workload_id: str) -> None:
        self._handle_path(workload_id).unlink(missing_ok=True)

    async def sweep_leftovers(self) -> int:
        """Clean up after a node that died: every recorded handle is a workload nobody watches.

        A handle of another version of nex is not given back to its runtime to read; its
        workload is swept by its id instead (``Runtime.sweep``), so an upgrade leaves no orphans."""
        swept = 0
        for path in sorted(self._handles_dir.glob("*.json")):
            try:
                handle = Handle.from_dict(json.loads(path.read_text()))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("unreadable handle %s: %s", path.name, exc)
                path.unlink(missing_ok=True)
                continue
            runtime = self._runtimes.get(handle.type)
            if runtime is not None:
                try:
                    await runtime.cleanup(handle)
                except IncompatibleHandle as exc:
                    log.warning("%s: sweeping workload %s by its id", exc, handle.workload_id)
                    await runtime.sweep(handle.workload_id)
            path.unlink(missing_ok=True)
            shutil.rmtree(self._work_root / handle.workload_id, ignore_errors=True)
            swept += 1
        return swept

    async def close(self) -> None:
        await self._health.close()
        for runtime in self._runtimes.values():
            await runtime.close()
