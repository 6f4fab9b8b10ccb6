"""OCI container workloads: an image, unpacked once per manifest digest, run by the node's OCI runtime.

The artifact is an OCI image layout: a tarball fetched from a ``file://`` or
``nats://`` uri, or a directory the artifact cache pulled from an ``oci://``
registry reference. :mod:`nex.images` unpacks it, within the node's image disk
budget, into a root filesystem only root can reach; each workload gets its own uid
range and bundle, whose rootfs is an idmapped read-only mount of that tree
(:mod:`nex.sandbox.idmap`), config.json from :mod:`nex.sandbox.bundle`, and runs through the same
:class:`nex.sandbox.runner.OciRunner` as sandboxed native workloads, with the same
namespaces, limits, logs, usage and cleanup. The process follows Docker's rules:
the image's entrypoint, then the deploy's argv or else the image's cmd; the image's
env overridden by the deploy's; its working dir and user.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from nex.api.errors import BadArtifact, BadRequest
from nex.api.models import Lifecycle, NetworkMode, WorkloadType
from nex.images import Image, ImageStore, process_for
from nex.runtimes.base import Capabilities, Handle, LogSink, RuntimeContext, WorkloadSpec
from nex.runtimes.containers import ContainerWorkloads
from nex.sandbox.bundle import MOUNT_POINTS, ContainerSpec
from nex.sandbox.idmap import mount_idmapped
from nex.sandbox.idranges import IdRanges
from nex.sandbox.runner import ID_PREFIX, OciRunner

# As for sandboxed native workloads: no network unless the deploy asks for the host's.
DEFAULT_NETWORK = NetworkMode.NONE


class OciRuntime(ContainerWorkloads):
    """wait, stop, cleanup and inspect: ContainerWorkloads; the image is held while a workload uses it."""

    type = WorkloadType.OCI
    capabilities = Capabilities(lifecycles=frozenset({Lifecycle.SERVICE, Lifecycle.JOB}), sandboxed=True)

    def __init__(self, context: RuntimeContext, runner: OciRunner, ranges: IdRanges | None = None) -> None:
        super().__init__(context, runner, ranges)
        # Root's alone: containers reach an image only through their idmapped mount of it.
        self.images = ImageStore(context.state_dir / "images", context.image_budget_bytes,
                                 mount_points=MOUNT_POINTS)
        self._prepared: dict[str, Image] = {}
        self._holding: dict[str, str] = {}  # workload id -> the digest of the image it holds

    async def prepare(self, spec: WorkloadSpec) -> list[str]:
        image = await self.images.acquire(spec.artifact_path)
        try:
            # An image that cannot run (no program, an unknown user) fails the deploy here, as a 400.
            self._container(spec, image, {}, Path("/"), 0)
        except BaseException:
            await self.images.release(image.digest, discard=True)
            raise
        self._prepared[spec.id] = image
        return []

    def _container(self, spec: WorkloadSpec, image: Image, nats_env: dict[str, str], rootfs: Path,
                   id_base: int) -> ContainerSpec:
        fixed = {"NEX_WORKLOAD_ID": spec.id, "NEX_WORKLOAD_NAME": spec.name,
                 "NEX_NAMESPACE": spec.namespace, "NEX_NODE_ID": self._context.node_id, **nats_env}
        process = process_for(image.config, image.rootfs, spec.argv, spec.env, fixed)
        try:
            return ContainerSpec(
                id=f"{ID_PREFIX}{spec.id}", rootfs=rootfs, args=process.args, env=process.env,
                cwd=process.cwd, limits=spec.limits, network=spec.network or DEFAULT_NETWORK,
                user=(process.uid, process.gid), readonly_root=True, hostname=spec.name, id_base=id_base,
            )
        except ValueError as exc:
            raise BadArtifact(f"the image cannot run here: {exc}") from None

    async def start(self, spec: WorkloadSpec, logs: LogSink) -> Handle:
        image = self._prepared.pop(spec.id, None) or await self.images.acquire(spec.artifact_path)
        self._holding[spec.id] = image.digest
        try:
            ids, bundle = self.open_bundle(spec.id)
        except BaseException:
            await self._let_go(spec.id, failed=True)
            raise
        try:
            rootfs = bundle / "rootfs"
            rootfs.mkdir(mode=0o700)
            try:
                await asyncio.to_thread(mount_idmapped, image.rootfs, rootfs, ids.base, ids.size,
                                        self._runner.gvisor is None)
            except OSError as exc:
                raise BadRequest(f"this node cannot run OCI images: it cannot make an idmapped mount of "
                                 f"an image ({exc}); that needs Linux 5.12 or later and a state dir on "
                                 f"ext4, xfs or btrfs") from None
            credentials = self._context.credentials
            container = self._container(spec, image, credentials.inline_environment(spec) if credentials else {},
                                        rootfs, ids.base)
            data = await self.run_container(container, bundle, ids, logs)
        except BaseException:
            self.close_bundle(bundle, ids.slot)
            await self._let_go(spec.id, failed=True)
            raise
        return Handle(workload_id=spec.id, type=self.type,
                      data={**data, "image": image.digest, "sandbox": self._runner.name})

    async def released(self, handle: Handle) -> None:
        await self._let_go(handle.workload_id)

    async def _let_go(self, workload_id: str, failed: bool = False) -> None:
        digest = self._holding.pop(workload_id, None)
        if digest is not None:
            await self.images.release(digest, discard=failed)

    async def close(self) -> None:
        await super().close()
        for image in self._prepared.values():
            await self.images.release(image.digest)
        self._prepared.clear()
