"""Getting an OCI image to a root filesystem a container can run.

Sources: an OCI image layout tarball (a ``file://`` or ``nats://`` artifact, fetched
and verified by the artifact cache) or a registry reference ``oci://host/repo:tag``
pulled with skopeo (:mod:`nex.images.registry`). Images are unpacked once per
manifest digest, within a disk budget (:mod:`nex.images.store`, :mod:`nex.images.unpack`),
and stripped of what must not reach the host (:mod:`nex.images.sanitize`);
:mod:`nex.images.config` turns the
image configuration and a deploy request into the process to run.
"""

from nex.images.config import ImageConfig, Process, process_for
from nex.images.reference import Reference, parse_reference
from nex.images.registry import RegistryError, manifest_digest, pull
from nex.images.store import Image, ImageStore, read_manifest

__all__ = [
    "Image", "ImageConfig", "ImageStore", "Process", "Reference", "RegistryError",
    "manifest_digest", "parse_reference", "process_for", "pull", "read_manifest",
]
