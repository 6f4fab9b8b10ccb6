"""What every container workload shares: the end of the Runtime protocol over an OciRunner.

A runtime whose workloads run as containers (``nex.runtimes.oci``,
``nex.runtimes.native_sandbox``) opens a bundle with :meth:`ContainerWorkloads.open_bundle`
(a host uid range of the workload's own, :mod:`nex.sandbox.idranges`, and a bundle
dir only that range's root and the node can enter), fills its rootfs, then
:meth:`ContainerWorkloads.run_container` writes the config and runs it; waiting,
stopping, cleaning up and reading usage are the same for all of them. The range's
slot is in the handle, so a node that restarts after a crash holds it again until
it has cleaned up what the dead node left.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nex.api.errors import TooManyRequests
from nex.runtimes.base import ExitResult, Handle, LogSink, RuntimeContext, WithoutAgent
from nex.sandbox.bundle import ContainerSpec
from nex.sandbox.idranges import IdRange, IdRanges, NoFreeRange, host_ranges
from nex.sandbox.runner import ID_PREFIX, OciRunner, make_bundle_dir, remove_bundle

log = logging.getLogger(__name__)


class ContainerWorkloads(WithoutAgent):
    def __init__(self, context: RuntimeContext, runner: OciRunner, ranges: IdRanges | None = None) -> None:
        self._context = context
        self._runner = runner
        self._ranges = ranges or host_ranges()
        # Containers not yet ended, with their bundle and range (the runner may serve another runtime).
        self._started: dict[str, tuple[Path, int]] = {}

    def open_bundle(self, workload_id: str) -> tuple[IdRange, Path]:
        """A uid range of the workload's own and its (empty) bundle dir."""
        try:
            ids = self._ranges.allocate(f"{self._runner.root} {workload_id}")
        except NoFreeRange as exc:
            raise TooManyRequests(str(exc)) from None
        bundle = self._runner.bundles_dir / workload_id
        try:
            make_bundle_dir(bundle, ids.base)
        except BaseException:
            self._ranges.release(ids.slot)
            raise
        return ids, bundle

    def close_bundle(self, bundle: Path, slot: int | None) -> None:
        """Remove the bundle (its rootfs unmounted first) and give the range back.

        A rootfs that cannot be unmounted keeps its bundle and its range: the next
        node start tries again.
        """
        if not remove_bundle(bundle):
            log.warning("cannot unmount the rootfs of %s; left for the next start", bundle)
            return
        if slot is not None:
            self._ranges.release(slot)

    async def run_container(self, container: ContainerSpec, bundle: Path, ids: IdRange,
                            logs: LogSink) -> dict[str, Any]:
        """Write the bundle's config and run the container (handle data)."""
        self._runner.write_bundle(container, bundle)
        data = await self._runner.start(container, bundle, logs)
        self._started[container.id] = (bundle, ids.slot)
        return {**data, "id_slot": ids.slot}

    async def wait(self, handle: Handle) -> ExitResult:
        try:
            return await self._runner.wait(handle.data["container_id"])
        finally:
            self._started.pop(handle.data["container_id"], None)
            self.close_bundle(Path(handle.data["bundle"]), handle.data.get("id_slot"))
            await self.released(handle)

    async def released(self, handle: Handle) -> None:
        """The workload of ``handle`` is gone, bundle and all: a runtime lets go of what it held."""

    async def stop(self, handle: Handle, grace: float) -> None:
        await self._runner.stop(handle.data["container_id"], grace)

    async def cleanup(self, handle: Handle) -> None:
        handle.require_current()
        if "container_id" not in handle.data:
            return
        slot = handle.data.get("id_slot")
        if isinstance(slot, int) and not self._ranges.claim(slot, f"{self._runner.root} {handle.workload_id}"):
            log.warning("uid range %d of workload %s is held by another process", slot, handle.workload_id)
            slot = None
        await self._runner.cleanup(handle.data["container_id"])
        if handle.data.get("bundle"):
            self.close_bundle(Path(handle.data["bundle"]), slot if isinstance(slot, int) else None)
        await self.released(handle)

    async def sweep(self, workload_id: str) -> None:
        # Container and bundle are named by the workload id in every version; the uid range's
        # lock went with the dead node's process.
        await self._runner.cleanup(f"{ID_PREFIX}{workload_id}")
        bundle = self._runner.bundles_dir / workload_id
        if bundle.exists():
            self.close_bundle(bundle, None)

    def inspect(self, handle: Handle) -> dict[str, Any]:
        container_id = handle.data["container_id"]
        return {"pid": self._runner.pid(container_id), **self._runner.usage(container_id).model_dump()}

    async def close(self) -> None:
        # The supervisor has stopped every workload in order; a container still running goes now.
        for container_id, (bundle, slot) in list(self._started.items()):
            await self._runner.cleanup(container_id)
            if self._started.pop(container_id, None) is not None and bundle.exists():
                self.close_bundle(bundle, slot)

