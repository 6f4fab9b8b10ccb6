"""What every container workload shares: the end of the Runtime protocol over an OciRunner.

A runtime whose workloads run as containers (``nex.runtimes.oci``; sandboxed
native workloads could use it too) makes its ContainerSpec and rootfs, then
:meth:`ContainerWorkloads.start_container` writes the bundle and runs it; waiting,
stopping, cleaning up and reading usage are the same for all of them.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from nex.runtimes.base import ExitResult, Handle, LogSink, RuntimeContext
from nex.sandbox.bundle import ContainerSpec, write_bundle
from nex.sandbox.runner import OciRunner, make_bundle_dir


class ContainerWorkloads:
    def __init__(self, context: RuntimeContext, runner: OciRunner) -> None:
        self._context = context
        self._runner = runner

    async def start_container(self, container: ContainerSpec, bundle_name: str, logs: LogSink) -> dict[str, Any]:
        """Write the bundle and run the container (handle data); a failure leaves no bundle."""
        bundle = make_bundle_dir(self._runner.bundles_dir / bundle_name)
        try:
            write_bundle(container, bundle)
            return await self._runner.start(container, bundle, logs)
        except BaseException:
            shutil.rmtree(bundle, ignore_errors=True)
            raise

    async def wait(self, handle: Handle) -> ExitResult:
        try:
            return await self._runner.wait(handle.data["container_id"])
        finally:
            shutil.rmtree(handle.data["bundle"], ignore_errors=True)

    async def stop(self, handle: Handle, grace: float) -> None:
        await self._runner.stop(handle.data["container_id"], grace)

    async def cleanup(self, handle: Handle) -> None:
        if "container_id" in handle.data:
            await self._runner.cleanup(handle.data["container_id"])
            shutil.rmtree(handle.data.get("bundle", ""), ignore_errors=True)

    def inspect(self, handle: Handle) -> dict[str, Any]:
        container_id = handle.data["container_id"]
        return {"pid": self._runner.pid(container_id), **self._runner.usage(container_id).model_dump()}

    async def close(self) -> None:
        pass
