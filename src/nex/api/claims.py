"""Signed claims: who asks for a control request, and for exactly which bytes. Pure, no I/O.

A claim travels in the ``Nex-Claim`` header of a control request. It is three
base64url parts (no padding) joined by dots, as NATS JWTs are::

    base64url(header) "." base64url(payload) "." base64url(signature)

The header is ``{"typ":"nex-claim","alg":"ed25519-nkey"}``; the payload is a
compact JSON :class:`Claim`; the signature is Ed25519 by the issuer's nkey over
the ASCII bytes ``header "." payload`` (the first two parts as sent). The issuer
is an account nkey (``A...``), the key type that issues JWTs in NATS; the
signer is the ``iss`` of the payload, so a claim verifies on its own and the
node then decides whether it trusts that issuer.

A claim binds the whole request: ``sub`` is the exact subject it is sent to
(namespace, verb and target: the node, the bid, the workload) and
``body_sha256`` the sha256 of the body bytes as sent. Nothing of a signed
request can change in flight, and it is good for one subject only: a deploy
signed for one node or bid is refused by every other. Any language signs the
bytes it sends; there is no canonical form to reproduce.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Annotated

import nkeys
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from pydantic import Field, ValidationError, model_validator

from nex.api.errors import BadSignature, ClaimExpired, MalformedClaim
from nex.api.keys import PREFIX_ACCOUNT, KeyDecodeError, decode_public
from nex.api.models import Strict, describe_validation_error
from nex.api.subjects import SVC_PREFIX

CLAIM_HEADER = "Nex-Claim"
HEADER = {"typ": "nex-claim", "alg": "ed25519-nkey"}
MAX_CLAIM_BYTES = 4096
CLOCK_SKEW_S = 30
MAX_LIFETIME_S = 24 * 3600
DEFAULT_LIFETIME_S = 300
ISSUER_PREFIX = "A"

Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
# $NEX.SVC.<ns>.control.<VERB>[.<target>...]: the subject a claim is good for.
_CONTROL_SUBJECT = re.escape(SVC_PREFIX) + r"\.[A-Za-z0-9_-]{1,64}\.control\.[A-Z]{1,16}(\.[A-Za-z0-9_-]{1,64}){0,2}"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


class Claim(Strict):
    """The signed payload. Times are seconds since the epoch (UTC)."""

    jti: str = Field(pattern=r"^[A-Za-z0-9_-]{16,64}$", description="unique id; accepted once in the fleet")
    iss: str = Field(pattern=r"^A[A-Z2-7]{55}$", description="the issuer's account nkey public key")
    iat: int = Field(ge=0, description="issued at; also not-before")
    exp: int = Field(ge=0, description="expires at")
    sub: str = Field(pattern=rf"^{_CONTROL_SUBJECT}$",
                     description="the exact subject of the request: namespace, verb and target")
    body_sha256: Hex64 = Field(description="sha256 of the request body bytes as sent (of b'' when empty)")

    @model_validator(mode="after")
    def _times(self) -> Claim:
        if self.exp <= self.iat:
            raise ValueError("exp must be after iat")
        if self.exp - self.iat > MAX_LIFETIME_S:
            raise ValueError(f"a claim may live at most {MAX_LIFETIME_S} seconds")
        return self

    @property
    def verb(self) -> str:
        return self.sub.split(".")[4]

    @property
    def namespace(self) -> str:
        return self.sub.split(".")[2]


@dataclass(frozen=True)
class SignedRequest:
    """A control request as it arrived: the subject, the body bytes and the ``Nex-Claim`` header."""

    subject: str
    body: bytes
    token: str | None = None


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    if not text or not _BASE64URL.fullmatch(text):
        raise MalformedClaim("malformed claim: a part is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise MalformedClaim("malformed claim: a part is not base64url") from None


def new_jti() -> str:
    return secrets.token_urlsafe(18)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sign(claim: Claim, issuer: nkeys.KeyPair) -> str:
    """The compact token of ``claim`` signed by ``issuer`` (whose public key must be ``claim.iss``)."""
    if issuer.public_key.decode() != claim.iss:
        raise ValueError("the claim's iss is not the signing key")
    header = b64url_encode(json.dumps(HEADER, separators=(",", ":")).encode())
    payload = b64url_encode(claim.model_dump_json(exclude_none=True).encode())
    signed = f"{header}.{payload}"
    return f"{signed}.{b64url_encode(issuer.sign(signed.encode()))}"


def request_claim(issuer: str, subject: str, body: bytes, now: float, lifetime: int = DEFAULT_LIFETIME_S) -> Claim:
    """The claim for sending ``body`` to ``subject``."""
    return Claim(jti=new_jti(), iss=issuer, iat=int(now), exp=int(now) + lifetime, sub=subject,
                 body_sha256=sha256_bytes(body))


def sign_request(issuer: nkeys.KeyPair, subject: str, body: bytes, now: float,
                 lifetime: int = DEFAULT_LIFETIME_S) -> str:
    """The ``Nex-Claim`` header value for sending ``body`` to ``subject``, signed by ``issuer``."""
    return sign(request_claim(issuer.public_key.decode(), subject, body, now, lifetime), issuer)


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
