"""App files: what a user writes for ``nex apply -f app.yaml``, turned into an :class:`AppSpec`.

The file is friendlier than the stored spec: an artifact may be a plain string (a
local path, ``nats://``, ``file://`` or ``oci://``) whose sha256 is found here,
triggers may be plain subjects, and ``env`` is given in the clear and sealed here
to the fleet's xkey, so the store never holds a value. Reading happens in two
steps so that a bad file changes nothing: :func:`parse_app_file` checks the whole
file without I/O beyond reading it, then :func:`build_spec` looks artifacts up,
seals env and, last, uploads local files.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Sequence
from urllib.parse import unquote, urlparse

import nats.errors
import nats.js.errors
import yaml
from nats.js import JetStreamContext
from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from nex.api import subjects
from nex.api.apps import AppSpec, AppWorkload
from nex.api.errors import AppNotFound, BadRequest, NexError, NotFound, Unavailable
from nex.api.models import Artifact, Strict, Token, Trigger, WorkloadType, check_env_names, check_unique_names
from nex.artifacts import parse_nats_uri, sha256_file
from nex.client.appstore import AppStore
from nex.client.artifacts import Artifacts
from nex.images.reference import SCHEME as OCI_SCHEME, parse_reference
from nex.images.registry import manifest_digest
from nex.pyfunc import build_function, is_python_function
from nex.security.keystore import UserKeys
from nex.security.xkeys import open_env, seal_env

__all__ = [
    "AppFileError", "ArtifactSource", "FileWorkload", "ParsedApp", "build_spec", "check_subjects", "parse_app_file",
]

MAX_FILE_BYTES = 1 << 20
_SCHEMES = ("nats://", "file://", OCI_SCHEME)


class AppFileError(BadRequest):
    """A problem in an app file; the message names the file and the field."""

    def __init__(self, path: str, problem: str, where: str | None = None) -> None:
        super().__init__(f"{path}: {where}: {problem}" if where else f"{path}: {problem}")
        self.path, self.where, self.problem = path, where, problem


class ArtifactSource(Strict):
    """Where a workload's artifact is, as the file says it; ``sha256`` is found when not given."""

    uri: str = Field(min_length=1, max_length=4096,
                     description="a local path (relative to the app file), nats://, file:// or oci://")
    sha256: str | None = Field(default=None, description="64 hex digits; a 'sha256:' prefix is allowed")

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, uri: str) -> str:
        if "://" in uri and not uri.startswith(_SCHEMES):
            raise ValueError(f"unknown scheme in {uri!r}: use a local path, nats://, file:// or oci://")
        try:  # the forms are checked here, before anything is looked up
            if uri.startswith("nats://"):
                parse_nats_uri(uri)
            elif uri.startswith(OCI_SCHEME):
                parse_reference(uri)
        except BadRequest as exc:
            raise ValueError(exc.message) from None
        return uri

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is None:
            return None
        digest = value.strip().lower().removeprefix("sha256:")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"{value!r} is not a sha256 (64 hex digits)")
        return digest

    @property
    def is_local(self) -> bool:
        """Whether the artifact is a local path (relative to the app file), uploaded by the apply."""
        return "://" not in self.uri


def _artifact_from_text(value: Any) -> Any:
    return {"uri": value} if isinstance(value, str) else value


def _trigger_from_text(value: Any) -> Any:
    return {"subject": value} if isinstance(value, str) else value


def _python_is_wasm(data: Any) -> Any:
    """A local ``.py`` artifact is a Python function, built into a wasm component: no type needed."""
    if isinstance(data, dict) and data.get("type") is None:
        artifact = data.get("artifact")
        uri = artifact.get("uri") if isinstance(artifact, dict) else artifact
        if isinstance(uri, str) and "://" not in uri and is_python_function(uri):
            return {**data, "type": WorkloadType.WASM.value}
    return data


class FileWorkload(AppWorkload):
    """An app workload as written in a file: the stored form, plus the friendlier fields."""

    _python_type = model_validator(mode="before")(lambda cls, data: _python_is_wasm(data))

    artifact: Annotated[ArtifactSource, BeforeValidator(_artifact_from_text)]  # type: ignore[assignment]
    triggers: list[Annotated[Trigger, BeforeValidator(_trigger_from_text)]] = Field(
        default_factory=list, max_length=64)
    env: dict[str, str] = Field(default_factory=dict, max_length=256,
                                description="in the clear here; sealed to the fleet xkey before it is stored")

    _env_names = field_validator("env")(lambda cls, env: check_env_names(env))

    @model_validator(mode="after")
    def _artifact_fits(self) -> FileWorkload:
        if self.artifact.uri.startswith(OCI_SCHEME) and self.type != WorkloadType.OCI:
            raise ValueError(f"an oci:// artifact is an image: the type must be oci, not {self.type}")
        if self.artifact.is_local and is_python_function(self.artifact.uri) and self.type != WorkloadType.WASM:
            raise ValueError(f"a .py artifact is a Python function, built into a wasm component: the type is wasm,"
                             f" not {self.type}")
        if self.env and self.sealed_env is not None:
            raise ValueError("give env (sealed by nex apply) or sealed_env, not both")
        return self


class AppFile(Strict):
    name: Token
    namespace: Token | None = None
    workloads: list[FileWorkload] = Field(min_length=1, max_length=256)

    _unique_names = field_validator("workloads")(lambda cls, workloads: check_unique_names(workloads))


@dataclass(frozen=True)
class ParsedApp:
    """A checked app file: what it says, the namespace it goes to, and where it was read."""

    path: Path
    shown: str  # the file as the user named it, for messages
    namespace: str
    app: AppFile


def parse_app_file(path: str | Path, namespace: str, namespace_given: bool = False) -> ParsedApp:
    """Read and check an app file (YAML, or JSON for ``.json``); raises AppFileError.

    ``namespace`` is the CLI's: the default for a file that names none. When the
    user gave it explicitly (``namespace_given``), a file naming another is an error.
    """
    shown = str(path)
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise AppFileError(shown, f"the file is over {MAX_FILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AppFileError(shown, "not UTF-8 text") from None
    except OSError as exc:
        raise AppFileError(shown, exc.strerror or str(exc)) from None
    data = _load_json(shown, text) if path.suffix.lower() == ".json" else _load_yaml(shown, text)
    if not isinstance(data, dict):
        raise AppFileError(shown, "an app file is a mapping with name, namespace and workloads")
    try:
        app = AppFile.model_validate(data)
    except ValidationError as exc:
        raise AppFileError(shown, describe_problems(exc)) from None
    if app.namespace is not None and namespace_given and app.namespace != namespace:
        raise AppFileError(shown, f"the file says namespace {app.namespace!r}, the command line {namespace!r}",
                           "namespace")
    check_subjects(shown, app.namespace or namespace, app.workloads)
    return ParsedApp(path=path, shown=shown, namespace=app.namespace or namespace, app=app)


def check_subjects(shown: str, namespace: str, workloads: Sequence[AppWorkload]) -> None:
    """The subject rule of workloads (nex.api.subjects), as a node applies it at deploy: no trigger
    or health check in another namespace's subjects; AppFileError naming ``shown`` otherwise. (A node's namespace_subjects is checked by the
    node: its refusal shows in the app's status)."""
    for index, workload in enumerate(workloads):
        for number, trigger in enumerate(workload.triggers):
            problem = subjects.namespace_subject_problem(namespace, trigger.subject)
            if problem is not None:
                raise AppFileError(shown, f"trigger subject {trigger.subject!r} {problem}",
                                   f"workloads[{index}].triggers[{number}]")
        if workload.health is not None and workload.health.nats is not None:
            scope = subjects.WorkloadScope.of(namespace, (t.subject for t in workload.triggers))
            problem = scope.publish_problem(workload.health.nats)
            if problem is not None:
                raise AppFileError(shown, f"health check: {problem}", f"workloads[{index}].health.nats")


def describe_problems(exc: ValidationError) -> str:
    """``workloads[0].restart.backoff: invalid duration '1x' ...``, one per problem, joined by '; '."""
    problems = []
    for err in exc.errors(include_url=False):
        where = field_path(err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def field_path(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice (YAML would silently keep the last)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load_yaml(shown: str, text: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise AppFileError(shown, f"not valid YAML: {where}{exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise AppFileError(shown, f"not valid YAML: {exc}") from None


def _load_json(shown: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise AppFileError(shown, f"not valid JSON: {exc}") from None


# -- resolving: artifacts, env, uploads ----------------------------------------------------


@dataclass(frozen=True)
class _Resolved:
    artifact: Artifact
    upload: Path | None = None  # a local file to put into the artifact bucket


async def build_spec(parsed: ParsedApp, client: Artifacts, store: AppStore, keys: UserKeys | None,
                     upload: bool = True) -> AppSpec:
    """The spec to store: every artifact's sha256 found, env sealed, local files uploaded
    (only when everything else succeeded, and not at all without ``upload``)."""
    app = parsed.app
    needs_env = [i for i, w in enumerate(app.workloads) if w.env]
    fleet_xkey = None
    if needs_env:
        where = f"workloads[{needs_env[0]}].env"
        if keys is None:
            raise AppFileError(parsed.shown, "your keys (nex keys) are needed to seal env", where)
        lease = await store.lease()
        if lease is None or lease.fleet_xkey is None:
            raise AppFileError(
                parsed.shown, "no reconciler holds the lease in NEX_LEASES, so there is no fleet key to seal "
                "env to: start a node (nex node up) and apply again", where)
        fleet_xkey = lease.fleet_xkey
    try:
        stored = (await store.get(parsed.namespace, app.name))[0].spec
    except AppNotFound:
        stored = None

    js = client.nc.jetstream(timeout=client.timeout)
    resolved = [await _resolve_artifact(parsed, i, w, js) for i, w in enumerate(app.workloads)]
    workloads = []
    for index, (workload, found) in enumerate(zip(app.workloads, resolved)):
        fields = workload.model_dump(exclude={"artifact", "env", "triggers"}, exclude_none=True)
        fields["artifact"] = found.artifact
        fields["triggers"] = workload.triggers
        if workload.env:
            previous = stored.workload(workload.name) if stored else None
            fields.update(_sealed(workload.env, keys, fleet_xkey, previous))
        try:
            workloads.append(AppWorkload.model_validate(fields))
        except ValidationError as exc:
            raise AppFileError(parsed.shown, describe_problems(exc), f"workloads[{index}]") from None
    spec = AppSpec(name=app.name, namespace=parsed.namespace, workloads=workloads)
    if upload:
        for found in resolved:
            if found.upload is not None:
                await client.upload_artifact(found.upload, namespace=parsed.namespace)
    return spec


def _sealed(env: dict[str, str], keys: UserKeys, fleet_xkey: str, previous: AppWorkload | None) -> dict[str, Any]:
    """The sealed env fields; the stored box is kept when it holds the same env, so applying an
    unchanged file does not change the workload's revision (a new box differs in every byte)."""
    sealed = None
    if previous is not None and previous.sealed_env and previous.sender_xkey == keys.xkey.public:
        try:
            # A box opens with either side's private key and the other's public one.
            if open_env(previous.sealed_env, fleet_xkey, keys.xkey) == env:
                sealed = previous.sealed_env
        except NexError:
            pass  # sealed to another fleet key: seal again
    return {"sealed_env": sealed or seal_env(env, keys.xkey, fleet_xkey), "sender_xkey": keys.xkey.public,
            "env_keys": sorted(env)}


async def _resolve_artifact(parsed: ParsedApp, index: int, workload: FileWorkload,
                            js: JetStreamContext) -> _Resolved:
    source = workload.artifact
    where = f"workloads[{index}].artifact"

    def fail(problem: str) -> AppFileError:
        return AppFileError(parsed.shown, problem, where)

    def checked(actual: str, what: str) -> str:
        if source.sha256 is not None and source.sha256 != actual:
            raise fail(f"sha256 {source.sha256} is given, but {what} has sha256 {actual}")
        return actual

    try:
        if source.is_local:
            path = (parsed.path.parent / source.uri).resolve()
            if not path.is_file():
                raise fail(f"no file {source.uri!r} (looked for {path})")
            if is_python_function(path):  # the artifact is the component built from it
                if source.sha256 is not None:
                    raise fail("a .py artifact is built here: give no sha256 (the component's is found)")
                path = (await asyncio.to_thread(build_function, path, source.uri)).path
            sha256 = checked(await asyncio.to_thread(sha256_file, path), str(path))
            uri = f"nats://{subjects.artifact_bucket(parsed.namespace)}/{sha256}"
            return _Resolved(Artifact(uri=uri, sha256=sha256), upload=path)
        if source.uri.startswith("nats://"):
            sha256 = checked(await _object_sha256(js, source.uri), f"the object {source.uri}")
            return _Resolved(Artifact(uri=source.uri, sha256=sha256))
        if source.uri.startswith("file://"):
            path = Path(unquote(urlparse(source.uri).path))
            if path.is_file():
                sha256 = checked(await asyncio.to_thread(sha256_file, path), str(path))
            elif source.sha256 is not None:
                sha256 = source.sha256  # a file on the nodes, not here: the node checks it
            else:
                raise fail(f"{path} is not on this machine: give its sha256 too ({{uri: ..., sha256: ...}})")
            return _Resolved(Artifact(uri=source.uri, sha256=sha256))
        reference = parse_reference(source.uri)
        if reference.digest:
            sha256 = checked(reference.digest.removeprefix("sha256:"), "the reference's digest")
        elif source.sha256 is not None:
            sha256 = source.sha256  # the node resolves the tag and refuses a mismatch
        else:
            sha256 = (await manifest_digest(reference)).removeprefix("sha256:")
        return _Resolved(Artifact(uri=source.uri, sha256=sha256))
    except (AppFileError, Unavailable):
        raise
    except NexError as exc:
        raise fail(exc.message) from None


async def _object_sha256(js: JetStreamContext, uri: str) -> str:
    """The sha256 of an Object Store object, from the digest the store keeps with it."""
    bucket, key = parse_nats_uri(uri)
    try:
        store = await js.object_store(bucket)
        info = await store.get_info(key)
    except nats.js.errors.BucketNotFoundError:
        raise NotFound(f"no Object Store bucket {bucket!r} (upload the file first, or give a local path)") from None
    except nats.js.errors.NotFoundError:
        raise NotFound(f"no object {key!r} in bucket {bucket!r}") from None
    except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
        raise Unavailable("JetStream is not enabled on this NATS server") from None
    digest = (info.digest or "").partition("=")[2]
    if not (info.digest or "").upper().startswith("SHA-256=") or not digest:
        raise BadRequest(f"the object {uri} has no SHA-256 digest")
    return base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex()
