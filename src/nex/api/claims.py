"""Signed claims: who asks for a DEPLOY or UNDEPLOY, and for exactly what. Pure, no I/O.

A claim is three base64url parts (no padding) joined by dots, as NATS JWTs are::

    base64url(header) "." base64url(payload) "." base64url(signature)

The header is ``{"typ":"nex-claim","alg":"ed25519-nkey"}``; the payload is a
compact JSON :class:`Claim`; the signature is Ed25519 by the issuer's nkey over
the ASCII bytes ``header "." payload`` (the first two parts as sent). The issuer
is an account nkey (``A...``), the key type that issues JWTs in NATS; the
signer is the ``iss`` of the payload, so a claim verifies on its own and the
node then decides whether it trusts that issuer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from enum import StrEnum
from typing import Annotated

import nkeys
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from pydantic import Field, ValidationError, model_validator

from nex.api.errors import BadSignature, ClaimExpired, MalformedClaim
from nex.api.keys import PREFIX_ACCOUNT, KeyDecodeError, decode_public
from nex.api.models import Strict, describe_validation_error
from nex.api.subjects import TOKEN_PATTERN

HEADER = {"typ": "nex-claim", "alg": "ed25519-nkey"}
MAX_CLAIM_BYTES = 4096
CLOCK_SKEW_S = 30
MAX_LIFETIME_S = 24 * 3600
DEFAULT_LIFETIME_S = 300
ISSUER_PREFIX = "A"

Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ClaimOp(StrEnum):
    DEPLOY = "deploy"
    UNDEPLOY = "undeploy"


class Claim(Strict):
    """The signed payload. Times are seconds since the epoch (UTC)."""

    jti: str = Field(pattern=r"^[A-Za-z0-9_-]{16,64}$", description="unique id; a node accepts it once")
    iss: str = Field(pattern=r"^A[A-Z2-7]{55}$", description="the issuer's account nkey public key")
    iat: int = Field(ge=0, description="issued at; also not-before")
    exp: int = Field(ge=0, description="expires at")
    op: ClaimOp
    namespace: str = Field(pattern=TOKEN_PATTERN)
    name: str | None = Field(default=None, pattern=TOKEN_PATTERN, description="deploy: the workload name")
    sha256: Hex64 | None = Field(default=None, description="deploy: the artifact's sha256")
    sealed_env_sha256: Hex64 | None = Field(
        default=None, description="deploy: sha256 of the request's sealed_env string, when it has one")
    workload_id: str | None = Field(default=None, pattern=TOKEN_PATTERN, description="undeploy: the workload")

    @model_validator(mode="after")
    def _fields_of_op(self) -> Claim:
        if self.exp <= self.iat:
            raise ValueError("exp must be after iat")
        if self.exp - self.iat > MAX_LIFETIME_S:
            raise ValueError(f"a claim may live at most {MAX_LIFETIME_S} seconds")
        if self.op == ClaimOp.DEPLOY and (self.name is None or self.sha256 is None):
            raise ValueError("a deploy claim names the workload and the artifact's sha256")
        if self.op == ClaimOp.UNDEPLOY and self.workload_id is None:
            raise ValueError("an undeploy claim names the workload id")
        return self


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    if not text or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in text):
        raise MalformedClaim("malformed claim: a part is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise MalformedClaim("malformed claim: a part is not base64url") from None


def new_jti() -> str:
    return secrets.token_urlsafe(18)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sign(claim: Claim, issuer: nkeys.KeyPair) -> str:
    """The compact token of ``claim`` signed by ``issuer`` (whose public key must be ``claim.iss``)."""
    if issuer.public_key.decode() != claim.iss:
        raise ValueError("the claim's iss is not the signing key")
    header = b64url_encode(json.dumps(HEADER, separators=(",", ":")).encode())
    payload = b64url_encode(claim.model_dump_json(exclude_none=True).encode())
    signed = f"{header}.{payload}"
    return f"{signed}.{b64url_encode(issuer.sign(signed.encode()))}"


def decode(token: str) -> Claim:
    """The verified claim of ``token``: its signature checks against its own ``iss``.

    Raises MalformedClaim (400) when it does not decode, BadSignature (403) when the
    signature does not verify. Whether the issuer is trusted is the caller's question.
    """
    if len(token) > MAX_CLAIM_BYTES:
        raise MalformedClaim(f"malformed claim: over {MAX_CLAIM_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedClaim("malformed claim: expected header.payload.signature")
    header_part, payload_part, signature_part = parts
    try:
        header = json.loads(b64url_decode(header_part))
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the interpreter's limit
        raise MalformedClaim("malformed claim: the header is not JSON") from None
    if header != HEADER:
        raise MalformedClaim(f"malformed claim: the header must be {json.dumps(HEADER)}")
    try:
        claim = Claim.model_validate_json(b64url_decode(payload_part))
    except ValidationError as exc:
        raise MalformedClaim("malformed claim: " + describe_validation_error(exc).removeprefix("invalid request: "))
    signature = b64url_decode(signature_part)
    try:
        verifier = VerifyKey(decode_public(PREFIX_ACCOUNT, claim.iss))
    except KeyDecodeError:
        raise MalformedClaim("malformed claim: iss is not an account public key") from None
    try:
        verifier.verify(f"{header_part}.{payload_part}".encode(), signature)
    except (BadSignatureError, ValueError):
        raise BadSignature() from None
    return claim


def check_time(claim: Claim, now: float, skew: float = CLOCK_SKEW_S) -> None:
    """Raises ClaimExpired unless ``now`` lies in [iat - skew, exp + skew]."""
    if now + skew < claim.iat:
        raise ClaimExpired(f"issued {claim.iat - now:.0f}s in the future")
    if now - skew > claim.exp:
        raise ClaimExpired(f"expired {now - claim.exp:.0f}s ago")


def deploy_claim(issuer: str, namespace: str, name: str, sha256: str, now: float,
                 sealed_env: str | None = None, lifetime: int = DEFAULT_LIFETIME_S) -> Claim:
    return Claim(
        jti=new_jti(), iss=issuer, iat=int(now), exp=int(now) + lifetime, op=ClaimOp.DEPLOY,
        namespace=namespace, name=name, sha256=sha256,
        sealed_env_sha256=sha256_text(sealed_env) if sealed_env else None,
    )


def undeploy_claim(issuer: str, namespace: str, workload_id: str, now: float,
                   lifetime: int = DEFAULT_LIFETIME_S) -> Claim:
    return Claim(
        jti=new_jti(), iss=issuer, iat=int(now), exp=int(now) + lifetime, op=ClaimOp.UNDEPLOY,
        namespace=namespace, workload_id=workload_id,
    )
