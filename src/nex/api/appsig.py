"""Signed desired state: the app token that ``nex apply`` and ``nex app delete`` sign. Pure, no I/O.

An app token is a token of :mod:`nex.api.tokens`, as a request claim is
(``header.payload.signature``, Ed25519 by the issuer's account nkey); its header
is ``{"typ":"nex-app",...}`` so that neither can pass for the other. The payload (:class:`AppClaim`) binds the
namespace, the name, the version and the digest of the whole spec.

The spec digest is a small Merkle form, so that a node can check the one workload
it is asked to run without the whole spec::

    workload digest = sha256(canonical JSON of the workload, sealed_env replaced by its sha256)
    spec digest     = sha256(canonical JSON of {"namespace", "name", "workloads": [[name, digest], ...]})

Canonical JSON is sorted keys, no spaces, ASCII, of the parsed model's JSON dump:
anyone holding the spec (or one workload's template and the list of digests)
computes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Annotated, Any

import nkeys
from pydantic import Field, model_validator

from nex.api import tokens
from nex.api.apps import AppSpec, AppWorkload
from nex.api.models import Strict, WorkloadDigest
from nex.api.subjects import TOKEN_PATTERN

__all__ = [
    "HEADER", "MAX_TOKEN_BYTES", "AppClaim", "AppOp", "canonical", "decode", "sign", "spec_digest",
    "spec_digest_of", "template", "workload_digest", "workload_digests",
]

HEADER = {"typ": "nex-app", "alg": "ed25519-nkey"}
MAX_TOKEN_BYTES = 4096

Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class AppOp(StrEnum):
    """What an app token signs: an ``apply`` of a spec, or a ``delete`` (a tombstone)."""

    APPLY = "apply"
    DELETE = "delete"


class AppClaim(Strict):
    """The signed payload of an app record. ``iat`` is seconds since the epoch (UTC)."""

    iss: str = Field(pattern=r"^A[A-Z2-7]{55}$", description="the applier's account nkey public key")
    iat: int = Field(ge=0, description="when it was signed (informative: app records do not expire)")
    op: AppOp
    namespace: str = Field(pattern=TOKEN_PATTERN)
    name: str = Field(pattern=TOKEN_PATTERN)
    version: int = Field(ge=1, le=1 << 53, description="the AppRecord version this token signs")
    spec_sha256: Hex64 | None = Field(default=None, description="apply: the spec digest (module docstring)")
    previous_sha256: Hex64 | None = Field(
        default=None, description="apply: the digest of the spec it replaces, the one a rollback restores")

    @model_validator(mode="after")
    def _fields_of_op(self) -> AppClaim:
        if self.op == AppOp.APPLY and self.spec_sha256 is None:
            raise ValueError("an apply token names the spec's sha256")
        if self.op == AppOp.DELETE and (self.spec_sha256 or self.previous_sha256):
            raise ValueError("a delete token names no spec")
        return self


def canonical(value: Any) -> bytes:
    """The canonical JSON of ``value`` (sorted keys, no spaces): the bytes a digest is taken of."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def template(workload: AppWorkload) -> dict[str, Any]:
    """What a workload's digest is computed over: its JSON, with the sealed env as a sha256
    (so a node can be shown the template without the box sealed to the fleet)."""
    form = workload.model_dump(mode="json")
    if form.get("isolation") is None:  # absent unless given: apps signed before the field keep their digests
        form.pop("isolation", None)
    sealed = form.pop("sealed_env", None)
    form["sealed_env_sha256"] = hashlib.sha256(sealed.encode()).hexdigest() if sealed else None
    return form


def workload_digest(form: dict[str, Any]) -> str:
    """The digest of a workload's :func:`template`."""
    return hashlib.sha256(canonical(form)).hexdigest()


def workload_digests(spec: AppSpec) -> list[WorkloadDigest]:
    """Each workload's name and the sha256 of its canonical form, in the spec's order."""
    return [WorkloadDigest(name=w.name, sha256=workload_digest(template(w))) for w in spec.workloads]


def spec_digest_of(namespace: str, name: str, digests: list[WorkloadDigest]) -> str:
    """The spec digest from the workloads' digests, in the spec's order."""
    body = {"namespace": namespace, "name": name, "workloads": [[d.name, d.sha256] for d in digests]}
    return hashlib.sha256(canonical(body)).hexdigest()


def spec_digest(spec: AppSpec) -> str:
    """The sha256 of the spec's canonical form: what an app token binds."""
    return spec_digest_of(spec.namespace, spec.name, workload_digests(spec))


def sign(claim: AppClaim, issuer: nkeys.KeyPair) -> str:
    """The compact token of ``claim`` signed by ``issuer`` (whose public key must be ``claim.iss``)."""
    return tokens.sign(HEADER, claim, issuer)


def decode(token: str) -> AppClaim:
    """The verified payload of ``token``: its signature checks against its own ``iss``.

    Raises MalformedClaim when it does not decode, BadSignature when the signature does
    not verify. Whether the issuer is trusted, and whether the token fits the record,
    is the caller's question.
    """
    return tokens.decode(token, HEADER, AppClaim, "app token", MAX_TOKEN_BYTES)
