"""``oci://host[:port]/repo[:tag][@sha256:...]`` references: parsing, no I/O."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from nex.api.errors import BadRequest

SCHEME = "oci://"
DEFAULT_TAG = "latest"

_HOST = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?$")
_REPO_PART = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Reference:
    host: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def loopback(self) -> bool:
        """True for registries on this host, which may speak plain HTTP."""
        return is_loopback(self.host)

    def docker(self, digest: str | None = None) -> str:
        """The skopeo transport string, pinned to ``digest`` when given."""
        pinned = digest or self.digest
        if pinned:
            return f"docker://{self.host}/{self.repository}@{pinned}"
        return f"docker://{self.host}/{self.repository}:{self.tag or DEFAULT_TAG}"

    def __str__(self) -> str:
        text = f"{SCHEME}{self.host}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") and host.count(":") == 1 else host
    if name.startswith("["):
        name = name[1:name.index("]")]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def parse_reference(uri: str) -> Reference:
    """Parse an ``oci://`` artifact uri; the registry host is always given, never implied."""
    if not uri.startswith(SCHEME):
        raise BadRequest(f"{uri!r} is not an oci:// reference")
    rest = uri[len(SCHEME):]
    host, sep, path = rest.partition("/")
    if not sep or not path or not _HOST.fullmatch(host):
        raise BadRequest(f"oci reference {uri!r} must be oci://host[:port]/repository[:tag]")
    path, _, digest = path.partition("@")
    last_slash = path.rfind("/")
    name_end = path.find(":", last_slash + 1)
    repository, tag = (path, None) if name_end < 0 else (path[:name_end], path[name_end + 1:])
    if not all(_REPO_PART.fullmatch(part) for part in repository.split("/")):
        raise BadRequest(f"oci reference {uri!r}: invalid repository name {repository!r}")
    if tag is not None and not _TAG.fullmatch(tag):
        raise BadRequest(f"oci reference {uri!r}: invalid tag {tag!r}")
    if digest and not _DIGEST.fullmatch(digest):
        raise BadRequest(f"oci reference {uri!r}: a digest must be sha256:<64 hex digits>")
    if tag is None and not digest:
        tag = DEFAULT_TAG
    return Reference(host=host, repository=repository, tag=tag, digest=digest or None)
