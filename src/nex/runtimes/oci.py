"""OCI container workloads: an image, unpacked once per manifest digest, run by the node's OCI runtime.

The artifact is an OCI image layout: a tarball fetched from a ``file://`` or
``nats://`` uri, or a directory the artifact cache pulled from an ``oci://``
registry reference. :mod:`nex.images` unpacks it into a root filesystem shared,
read-only, by every container of that image; each workload gets its own bundle
(config.json from :mod:`nex.sandbox.bundle`) and runs through the same
:class:`nex.sandbox.runner.OciRunner` as sandboxed native workloads, with the same
namespaces, limits, logs, usage and cleanup. The process follows Docker's rules:
the image's entrypoint, then the deploy's argv or else the image's cmd; the image's
env overridden by the deploy's; its working dir and user.
"""

from __future__ import annotations

from pathlib import Path

from nex.api.errors import BadArtifact
from nex.api.models import Lifecycle, NetworkMode, WorkloadType
from nex.images import Image, ImageStore, process_for
from nex.runtimes.base import Capabilities, Handle, LogSink, RuntimeContext, WorkloadSpec
from nex.runtimes.containers import ContainerWorkloads
from nex.sandbox.bundle import HOST_ID_BASE, ID_RANGE, MOUNT_POINTS, ContainerSpec
from nex.sandbox.runner import ID_PREFIX, OciRunner

# As for sandboxed native workloads: no network unless the deploy asks for the host's.
DEFAULT_NETWORK = NetworkMode.NONE


def images_dir(bundles_dir: Path) -> Path:
    """Next to the bundles, for the same reason: the user namespace's root must be able to
    search every directory above a rootfs (see nex.sandbox.runner.bundle_base)."""
    if bundles_dir.name == "bundles":
        return bundles_dir.parent / "images"
    return bundles_dir.with_name(f"{bundles_dir.name}-images")


class OciRuntime(ContainerWorkloads):
    """wait, stop, cleanup (the image's rootfs is shared and stays) and inspect: ContainerWorkloads."""

    type = WorkloadType.OCI
    capabilities = Capabilities(lifecycles=frozenset({Lifecycle.SERVICE, Lifecycle.JOB}), sandboxed=True)

    def __init__(self, context: RuntimeContext, runner: OciRunner) -> None:
        super().__init__(context, runner)
        self.images = ImageStore(images_dir(runner.bundles_dir), id_shift=(HOST_ID_BASE, ID_RANGE),
                                 mount_points=MOUNT_POINTS)
        self._prepared: dict[str, Image] = {}

    async def prepare(self, spec: WorkloadSpec) -> None:
        image = await self.images.get(spec.artifact_path)
        self._container(spec, image, {})  # an image that cannot run fails the deploy here, as a 400
        self._prepared[spec.id] = image

    def _container(self, spec: WorkloadSpec, image: Image, nats_env: dict[str, str]) -> ContainerSpec:
        fixed = {"NEX_WORKLOAD_ID": spec.id, "NEX_WORKLOAD_NAME": spec.name,
                 "NEX_NAMESPACE": spec.namespace, "NEX_NODE_ID": self._context.node_id, **nats_env}
        process = process_for(image.config, image.rootfs, spec.argv, spec.env, fixed)
        try:
            return ContainerSpec(
                id=f"{ID_PREFIX}{spec.id}", rootfs=image.rootfs, args=process.args, env=process.env,
                cwd=process.cwd, limits=spec.limits, network=spec.network or DEFAULT_NETWORK,
                user=(process.uid, process.gid), readonly_root=True, hostname=spec.name,
            )
        except ValueError as exc:
            raise BadArtifact(f"the image cannot run here: {exc}") from None

    async def start(self, spec: WorkloadSpec, logs: LogSink) -> Handle:
        image = self._prepared.pop(spec.id, None) or await self.images.get(spec.artifact_path)
        credentials = self._context.credentials
        container = self._container(spec, image, credentials.inline_environment(spec) if credentials else {})
        data = await self.start_container(container, spec.id, logs)
        return Handle(workload_id=spec.id, type=self.type,
                      data={**data, "image": image.digest, "sandbox": self._runner.name})

    async def close(self) -> None:
        self._prepared.clear()
