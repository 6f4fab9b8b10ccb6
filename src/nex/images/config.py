"""An image's run configuration, and the process a deploy makes of it (Docker's rules)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nex.api.errors import BadArtifact

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def node_architecture() -> str:
    """This host's architecture as OCI names it (amd64, arm64)."""
    machine = os.uname().machine
    return _GOARCH.get(machine, machine)


@dataclass(frozen=True)
class ImageConfig:
    """The ``config`` part of an OCI image configuration."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str = ""
    user: str = ""
    architecture: str = ""
    os: str = ""

    @classmethod
    def from_json(cls, data: bytes) -> ImageConfig:
        try:
            raw = json.loads(data)
            run = raw.get("config") or {}
            env = dict(_env_pair(item) for item in run.get("Env") or [])
            return cls(
                entrypoint=_strings(run.get("Entrypoint")), cmd=_strings(run.get("Cmd")), env=env,
                working_dir=str(run.get("WorkingDir") or ""), user=str(run.get("User") or ""),
                architecture=str(raw.get("architecture") or ""), os=str(raw.get("os") or ""),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise BadArtifact(f"the image configuration is not valid: {exc}") from None

    def check_platform(self) -> None:
        if self.os and self.os != "linux":
            raise BadArtifact(f"the image is built for {self.os}, this node runs linux")
        arch = node_architecture()
        if self.architecture and self.architecture != arch:
            raise BadArtifact(f"the image is built for {self.architecture}, this node is {arch}")


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return list(value)


def _env_pair(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not key:
        raise ValueError(f"invalid environment entry {item!r}")
    return key, value


@dataclass(frozen=True)
class Process:
    """What the container runs: the OCI runtime spec's ``process``, in short."""

    args: list[str]
    env: dict[str, str]
    cwd: str
    uid: int
    gid: int


def process_for(
    config: ImageConfig, rootfs: Path, argv: list[str], env: dict[str, str], fixed_env: dict[str, str]
) -> Process:
    """Entrypoint + (deploy argv, or else the image's cmd); image env < deploy env < ``fixed_env``."""
    args = config.entrypoint + (argv or config.cmd)
    if not args:
        raise BadArtifact("the image has neither an entrypoint nor a cmd, and the deploy gives no argv")
    uid, gid, home = resolve_user(config.user, rootfs)
    merged = {"PATH": DEFAULT_PATH, "HOME": home, **config.env, **env, **fixed_env}
    cwd = config.working_dir or "/"
    if not cwd.startswith("/"):
        cwd = "/" + cwd
    return Process(args=args, env=merged, cwd=cwd, uid=uid, gid=gid)


def resolve_user(user: str, rootfs: Path) -> tuple[int, int, str]:
    """``uid``, ``name``, ``uid:gid`` or ``name:group`` → (uid, gid, home), names from the image's files."""
    name, _, group = (user or "0").partition(":")
    passwd = _table(rootfs, "etc/passwd")
    if name.isdigit():
        uid = int(name)
        entry = next((e for e in passwd if e[2] == name), None)
    else:
        entry = next((e for e in passwd if e[0] == name), None)
        if entry is None or not entry[2].isdigit():
            raise BadArtifact(f"the image's user {name!r} is not in its /etc/passwd")
        uid = int(entry[2])
    gid = int(entry[3]) if entry and entry[3].isdigit() else 0  # as Docker: no entry, group 0
    home = entry[5] if entry and len(entry) > 5 and entry[5] else "/"
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = next((e for e in _table(rootfs, "etc/group") if e[0] == group), None)
            if found is None or not found[2].isdigit():
                raise BadArtifact(f"the image's group {group!r} is not in its /etc/group")
            gid = int(found[2])
    return uid, gid, home


def _table(rootfs: Path, name: str) -> list[list[str]]:
    path = (rootfs / name).resolve()
    # Symlinks resolve against the node's root, not the image's: one that leads out is not followed.
    if not path.is_relative_to(rootfs.resolve()) or not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and not line.startswith("#"):
            rows.append(fields)
    return rows
