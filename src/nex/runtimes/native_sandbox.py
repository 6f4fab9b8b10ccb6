"""Native workloads in a sandbox: the executable alone in a read-only rootfs, run by an OCI runtime.

The node writes one bundle per workload (``<bundles>/<workload id>``, entered only
by the node and the workload's own uid range): a rootfs holding only ``/bin/<name>``
(a copy of the artifact) and the mount points, and a config.json from
:mod:`nex.sandbox.bundle`. Waiting, stopping, cleanup and usage
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
from nex.runtimes.native import NativeRuntime, check_executable, workload_environment
from nex.sandbox.bundle import ContainerSpec
from nex.sandbox.runner import ID_PREFIX

DEFAULT_NETWORK = NetworkMode.NONE
SANDBOX_PATH = "/bin"
SANDBOX_HOME = "/tmp"


class SandboxedNativeRuntime(ContainerWorkloads):
    type = WorkloadType.NATIVE
    capabilities = Capabilities(lifecycles=frozenset({Lifecycle.SERVICE, Lifecycle.JOB}), sandboxed=True)

    async def prepare(self, spec: WorkloadSpec) -> list[str]:
        # The rootfs holds the artifact alone: a dynamic loader, its libraries or a script's
        # interpreter would be missing, and the start would fail a moment after it was reported.
        return check_executable(spec.artifact_path, sandboxed=True)

    def _container(self, spec: WorkloadSpec, rootfs: Path, id_base: int) -> ContainerSpec:
        env = workload_environment(spec, self._context.node_id, SANDBOX_HOME)
        env["PATH"] = SANDBOX_PATH
        if self._context.credentials is not None:
            env.update(self._context.credentials.inline_environment(spec))
        return ContainerSpec(
            id=f"{ID_PREFIX}{spec.id}", rootfs=rootfs, args=[f"{SANDBOX_PATH}/{spec.name}", *spec.argv],
            env=env, cwd=SANDBOX_HOME, limits=spec.limits, network=spec.network or DEFAULT_NETWORK,
            hostname=spec.name, id_base=id_base,
        )

    async def start(self, spec: WorkloadSpec, logs: LogSink) -> Handle:
        ids, bundle = self.open_bundle(spec.id)
        rootfs = bundle / "rootfs"
        try:
            (rootfs / "bin").mkdir(parents=True, exist_ok=True)
            program = rootfs / "bin" / spec.name
            shutil.copyfile(spec.artifact_path, program)
            program.chmod(0o555)
            data = await self.run_container(self._container(spec, rootfs, ids.base), bundle, ids, logs)
        except BaseException:
            self.close_bundle(bundle, ids.slot)
            raise
        return Handle(workload_id=spec.id, type=self.type, data={**data, "sandbox": self._runner.name})

    async def cleanup(self, handle: Handle) -> None:
        if "container_id" in handle.data:
            await super().cleanup(handle)
        else:  # left by a node that ran native workloads as plain processes
            await NativeRuntime(self._context).cleanup(handle)

    async def sweep(self, workload_id: str) -> None:
        await super().sweep(workload_id)
        await NativeRuntime(self._context).sweep(workload_id)  # a node that ran plain processes
