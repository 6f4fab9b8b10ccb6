"""Native workloads in a sandbox: the executable alone in a read-only rootfs, run by an OCI runtime.

The node writes one bundle per workload (``<bundles>/<workload id>``): a rootfs
holding only ``/bin/<name>`` (a copy of the artifact that others may execute but not
read) and the mount points, and a config.json from :mod:`nex.sandbox.bundle`. Waiting, stopping, cleanup and usage
are those of every container workload (:mod:`nex.runtimes.containers`). What the
sandbox isolates and how cleanup works is in docs/sandbox.md. The plain-process
runtime stays in :mod:`nex.runtimes.native`; the registry picks one of the two per node.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from nex.api.models import Lifecycle, NetworkMode, WorkloadType
from nex.runtimes.base import Capabilities, Handle, LogSink, WorkloadSpec
from nex.runtimes.containers import ContainerWorkloads
from nex.runtimes.native import NativeRuntime, check_elf, workload_environment
from nex.sandbox.bundle import ContainerSpec
from nex.sandbox.runner import ID_PREFIX, make_bundle_dir

DEFAULT_NETWORK = NetworkMode.NONE
SANDBOX_PATH = "/bin"
SANDBOX_HOME = "/tmp"
PROGRAM_MODE = 0o511


class SandboxedNativeRuntime(ContainerWorkloads):
    type = WorkloadType.NATIVE
    capabilities = Capabilities(lifecycles=frozenset({Lifecycle.SERVICE, Lifecycle.JOB}), sandboxed=True)

    async def prepare(self, spec: WorkloadSpec) -> None:
        check_elf(spec.artifact_path)

    def _container(self, spec: WorkloadSpec, rootfs: Path) -> ContainerSpec:
        env = workload_environment(spec, self._context.node_id, SANDBOX_HOME)
        env["PATH"] = SANDBOX_PATH
        if self._context.credentials is not None:
            env.update(self._context.credentials.inline_environment(spec))
        return ContainerSpec(
            id=f"{ID_PREFIX}{spec.id}", rootfs=rootfs, args=[f"{SANDBOX_PATH}/{spec.name}", *spec.argv],
            env=env, cwd=SANDBOX_HOME, limits=spec.limits, network=spec.network or DEFAULT_NETWORK,
            hostname=spec.name,
        )

    async def start(self, spec: WorkloadSpec, logs: LogSink) -> Handle:
        bundle = make_bundle_dir(self._runner.bundles_dir / spec.id)
        rootfs = bundle / "rootfs"
        try:
            (rootfs / "bin").mkdir(parents=True, exist_ok=True)
            program = rootfs / "bin" / spec.name
            shutil.copyfile(spec.artifact_path, program)
            # Execute, not read: the mapped user runs it, and no other user of the host may copy it.
            program.chmod(PROGRAM_MODE)
        except BaseException:
            shutil.rmtree(bundle, ignore_errors=True)
            raise
        data = await self.start_container(self._container(spec, rootfs), spec.id, logs)
        return Handle(workload_id=spec.id, type=self.type, data={**data, "sandbox": self._runner.name})

    async def cleanup(self, handle: Handle) -> None:
        if "container_id" in handle.data:
            await super().cleanup(handle)
        else:  # left by a node that ran native workloads as plain processes
            await NativeRuntime(self._context).cleanup(handle)
