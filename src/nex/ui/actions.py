"""The dashboard's actions: deploy an uploaded file, stop a workload, lame-duck a node.

Each takes what the page sent, checks it, and calls :class:`nex.client.NexClient`
as the CLI would (a deploy is ``nex devrun``: upload to the artifact store, then
placement by auction). Bad input raises a :class:`~nex.api.errors.NexError` before
anything is uploaded or changed.
"""

from __future__ import annotations

import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, MultipartReader

from nex.api import subjects
from nex.api.errors import BadRequest
from nex.api.models import WorkloadSummary, WorkloadType
from nex.localfiles import workload_name_for
from nex.ui.fleet import FleetWatcher

DEFAULT_MAX_UPLOAD_MIB = 256
_FIELDS = {"namespace", "type", "name", "trigger", "argv"}
_FIELD_MAX = 1024
_CHUNK = 256 * 1024


@dataclass(frozen=True)
class DeployForm:
    """What the deploy dialog sends, the file already saved to ``path``."""

    path: Path
    filename: str
    namespace: str
    type: WorkloadType | None
    name: str
    trigger: str | None
    argv: list[str]


async def read_deploy_form(reader: MultipartReader, directory: Path, default_namespace: str,
                           max_bytes: int) -> DeployForm:
    """Read a multipart deploy form; the file goes to ``directory`` under its own suffix
    (the workload type is guessed from it as ``nex devrun`` does)."""
    fields: dict[str, str] = {}
    saved: tuple[Path, str] | None = None
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart bodies are not accepted")
        if part.name == "file":
            if saved is not None:
                raise BadRequest("send one file")
            saved = await _save(part, directory, max_bytes)
        elif part.name in _FIELDS:
            value = (await part.read(decode=True)).decode(errors="replace")
            if len(value) > _FIELD_MAX:
                raise BadRequest(f"field {part.name!r} is too long")
            fields[part.name] = value.strip()
        else:
            raise BadRequest(f"unknown field {part.name!r}")
    if saved is None:
        raise BadRequest("choose a file to deploy")
    path, filename = saved
    type_text = fields.get("type") or ""
    try:
        workload_type = WorkloadType(type_text) if type_text and type_text != "auto" else None
    except ValueError:
        raise BadRequest(f"unknown workload type {type_text!r}: "
                         f"one of {', '.join(t.value for t in WorkloadType)}") from None
    namespace = fields.get("namespace") or default_namespace
    if not subjects.is_token(namespace):
        raise BadRequest(f"invalid namespace {namespace!r}")
    name = fields.get("name") or workload_name_for(filename)
    if not subjects.is_token(name):
        raise BadRequest(f"invalid workload name {name!r}: use 1-64 letters, digits, '_' or '-'")
    trigger = fields.get("trigger") or None
    try:
        argv = shlex.split(fields.get("argv") or "")
    except ValueError as exc:
        raise BadRequest(f"arguments {fields['argv']!r}: {exc}") from None
    return DeployForm(path, filename, namespace, workload_type, name, trigger, argv)


async def deploy(watcher: FleetWatcher, form: DeployForm) -> WorkloadSummary:
    client = watcher.client_for(form.namespace)
    summary = await client.devrun(form.path, type=form.type, name=form.name, argv=form.argv,
                                  triggers=[form.trigger] if form.trigger else [])
    watcher.poke()
    return summary


async def stop(watcher: FleetWatcher, namespace: str, workload_id: str) -> dict[str, Any]:
    response = await watcher.client_for(namespace).undeploy(workload_id)
    watcher.poke()
    return response.model_dump(mode="json")


async def lameduck(watcher: FleetWatcher, node_id: str) -> dict[str, Any]:
    response = await watcher.primary.lameduck(node_id)
    watcher.poke()
    return response.model_dump(mode="json")


def upload_directory() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="nex-ui-upload-")


async def _save(part: BodyPartReader, directory: Path, max_bytes: int) -> tuple[Path, str]:
    filename = Path(part.filename or "").name
    if not filename:
        raise BadRequest("the uploaded file has no name")
    # Only the suffix of the user's name is kept: the name itself never becomes a path.
    suffix = "".join(c for c in Path(filename).suffix[:16] if c.isalnum() or c == ".")
    path = directory / f"upload{suffix}"
    size = 0
    with path.open("wb") as f:
        while chunk := await part.read_chunk(_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise BadRequest(f"the file is larger than the upload limit of {max_bytes // (1024 * 1024)} MiB")
            f.write(chunk)
    if size == 0:
        raise BadRequest(f"{filename} is empty")
    return path, filename
