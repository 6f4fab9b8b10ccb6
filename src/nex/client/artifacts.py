"""Artifacts: uploads to the namespace's object store, and devrun, from a local file or an image
reference (resolved with skopeo) to a running workload."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import quote

import nats.errors
import nats.js.errors
from nats.js.api import ObjectStoreConfig
from pydantic import ValidationError

from nex.api import subjects
from nex.api.errors import ArtifactNotFound, BadArtifact, BadRequest, BidNotFound, Unavailable
from nex.api.models import (
    Artifact, AuctionRequest, DeployRequest, Isolation, Lifecycle, Limits, NetworkMode, Trigger, WorkloadSummary,
    WorkloadType,
    describe_validation_error,
)
from nex.artifacts import sha256_file
from nex.client.placement import Placement
from nex.client.transport import DEFAULT_GATHER_S
from nex.images.reference import SCHEME as OCI_SCHEME, parse_reference
from nex.images.registry import manifest_digest
from nex.jsreplicas import nodes_replicas
from nex.localfiles import CountingReader, guess_type, workload_name_for
from nex.pyfunc import build_function, is_python_function

# A node compiles a component on its first deploy, before it answers: seconds for the 18 MB of
# a Python function, where a JavaScript file or a core module takes milliseconds.
PYTHON_DEPLOY_TIMEOUT_S = 120.0

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) while an artifact uploads."""


class Artifacts(Placement):
    """Uploads, and the quickest way from a file to a workload."""

    async def upload_artifact(
        self, path: str | Path, key: str | None = None, progress: Progress | None = None,
        namespace: str | None = None,
    ) -> Artifact:
        """Put a file into the artifact bucket of the client's namespace (or of ``namespace``);
        the key defaults to its sha256.

        An object that already holds the same bytes under that key is not sent again.

        Raises:
            ArtifactNotFound: there is no file at ``path``.
            BadRequest: ``path`` is not a readable file.
            Unavailable: JetStream did not answer.

        """
        path = local_file(path)
        sha256 = await asyncio.to_thread(sha256_file, path)
        return await self._upload(path, key or sha256, sha256, progress, namespace)

    async def devrun(
        self,
        path: str | Path,
        *,
        type: WorkloadType | str | None = None,
        name: str | None = None,
        triggers: Iterable[str | Trigger] = (),
        env: Mapping[str, str] | None = None,
        argv: Iterable[str] = (),
        lifecycle: Lifecycle | str | None = None,
        limits: Limits | None = None,
        network: NetworkMode | str | None = None,
        node_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        progress: Progress | None = None,
        isolation: Isolation | str | None = None,
    ) -> WorkloadSummary:
        """Upload a local file and deploy it: the quickest way from a file to a workload.

        ``path`` may also be an image reference ``oci://host/repo:tag``: nothing is
        uploaded, the node pulls it, and its sha256 is the manifest digest the
        registry gives now (resolved here with skopeo). Without ``node_id`` the node is
        placed by auction, among the nodes that have every one of ``tags`` and whose isolation
        tier meets ``isolation`` (``process`` < ``container`` < ``gvisor``). The request
        is checked and the auction held before anything is uploaded.

        A Python file (``hello.py``, with ``handle(subject, payload)``) is built here into a
        WebAssembly component, or found in the build cache, and deployed as a ``wasm``
        function; a module that does not build raises a BadRequest that names its file and line.

        Raises:
            ArtifactNotFound: there is no file at ``path``.
            BadRequest: a field is wrong (a name, a trigger, a limit), or the file's type cannot be guessed;
                a Python file that does not build (``BuildError``: ``file:line: message``).
            Unavailable: no node bids (the message gives each node's reason), or none answers.
            Forbidden: the node refuses the claim (unsigned, untrusted issuer...).

        Example:
            ```python
            workload = await client.devrun("hello.js", triggers=["demo.hello"], env={"WHO": "nex"})
            ```

        """
        if node_id is not None and tags:
            raise BadRequest("give a node or placement tags, not both")
        is_reference = isinstance(path, str) and path.startswith(OCI_SCHEME)
        deploy_timeout = None
        if is_reference:
            reference = parse_reference(path)
            workload_type = WorkloadType(type or WorkloadType.OCI)
            sha256 = (await manifest_digest(reference)).removeprefix("sha256:")
            artifact = Artifact(uri=path, sha256=sha256)
            default_name = workload_name_for(reference.repository.rsplit("/", 1)[-1])
        elif is_python_function(path):
            if type is not None and WorkloadType(type) != WorkloadType.WASM:
                raise BadRequest(f"{path} is a Python function, built into a wasm component: its type is wasm")
            default_name = workload_name_for(path)
            path = (await asyncio.to_thread(build_function, local_file(path), str(path))).path
            workload_type = WorkloadType.WASM
            deploy_timeout = max(self.timeout, PYTHON_DEPLOY_TIMEOUT_S)
            sha256 = await asyncio.to_thread(sha256_file, path)
            artifact = Artifact(uri=self._artifact_uri(sha256), sha256=sha256)
        else:
            path = local_file(path)
            workload_type = WorkloadType(type) if type else await asyncio.to_thread(guess_type, path)
            sha256 = await asyncio.to_thread(sha256_file, path)
            artifact = Artifact(uri=self._artifact_uri(sha256), sha256=sha256)
            default_name = workload_name_for(path)
        try:
            request = DeployRequest(
                name=name or default_name,
                type=workload_type,
                lifecycle=Lifecycle(lifecycle) if lifecycle else None,
                artifact=artifact,
                namespace=self.namespace,
                argv=list(argv),
                env=dict(env or {}),
                triggers=[t if isinstance(t, Trigger) else Trigger(subject=t) for t in triggers],
                limits=limits or Limits(),
                network=NetworkMode(network) if network else None,
                isolation=Isolation(isolation) if isolation else None,
            )
        except ValidationError as exc:
            raise BadRequest(describe_validation_error(exc)) from None
        if node_id is not None:
            if not is_reference:
                await self._upload(Path(path), sha256, sha256, progress)
            return await self.deploy(node_id, request, timeout=deploy_timeout)
        try:
            constraints = AuctionRequest(type=request.type, lifecycle=request.lifecycle, tags=dict(tags or {}),
                                         memory_mib=request.limits.memory_mib, isolation=request.isolation)
        except ValidationError as exc:
            raise BadRequest(describe_validation_error(exc)) from None
        bids = await self._bids(constraints, DEFAULT_GATHER_S, None)
        if not is_reference:
            await self._upload(Path(path), sha256, sha256, progress)
        try:
            return await self._deploy_to_best(bids, request, deploy_timeout)
        except BidNotFound:  # the upload outlasted the bids: hold the auction again
            return await self.place(request, constraints, timeout=deploy_timeout)

    def _artifact_uri(self, key: str, namespace: str | None = None) -> str:
        return f"nats://{subjects.artifact_bucket(namespace or self.namespace)}/{quote(key)}"

    async def _upload(self, path: Path, key: str, sha256: str, progress: Progress | None,
                      namespace: str | None = None) -> Artifact:
        total = path.stat().st_size
        artifact = Artifact(uri=self._artifact_uri(key, namespace), sha256=sha256)
        expected_digest = "SHA-256=" + base64.urlsafe_b64encode(bytes.fromhex(sha256)).decode()
        try:
            store = await self._artifact_store(subjects.artifact_bucket(namespace or self.namespace))
            try:
                existing = await store.get_info(key)
                if existing.digest == expected_digest and existing.size == total:
                    if progress:
                        progress(total, total)
                    return artifact
            except nats.js.errors.NotFoundError:
                pass
            # store.put reads the file in a worker thread; progress hops back to the loop.
            loop = asyncio.get_running_loop()
            done = 0

            def on_read(n: int) -> None:
                nonlocal done
                done += n
                if progress:
                    loop.call_soon_threadsafe(progress, done, total)

            with path.open("rb") as f:
                info = await store.put(key, CountingReader(f, on_read))
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
            raise Unavailable("JetStream is not enabled on this NATS server") from None
        if info.digest != expected_digest:
            raise BadArtifact(f"{path} changed while it was uploaded; try again")
        return artifact

    async def _artifact_store(self, bucket: str) -> Any:
        js = self.nc.jetstream(timeout=self.timeout)
        try:
            return await js.object_store(bucket)
        except nats.js.errors.BucketNotFoundError:
            pass
        try:
            return await js.create_object_store(bucket, config=ObjectStoreConfig(
                bucket=bucket, replicas=await nodes_replicas(js)))
        except nats.errors.TimeoutError:
            # Credentials of a namespace may not create streams (nex creds makes the bucket).
            raise Unavailable(f"the artifact bucket {bucket} does not exist, and JetStream did not create it"
                              " for these credentials: an operator makes it (nex creds, or nats object add"
                              f" {bucket})") from None


def local_file(path: str | Path) -> Path:
    """``path`` when it is a file this process can read: ArtifactNotFound when there is nothing
    there, BadRequest when it is something else (a directory, unreadable)."""
    path = Path(path)
    if not path.exists():
        raise ArtifactNotFound(str(path))
    if not path.is_file():
        raise BadRequest(f"{path} is not a file")
    if not os.access(path, os.R_OK):
        raise BadRequest(f"{path} is not readable")
    return path
