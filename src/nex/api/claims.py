"""Signed claims: who asks for a control request, and for exactly which bytes. Pure, no I/O.

A claim travels in the ``Nex-Claim`` header of a control request. It is a token
of :mod:`nex.api.tokens` (``header.payload.signature``, Ed25519 by the issuer's
account nkey) with the header ``{"typ":"nex-claim","alg":"ed25519-nkey"}`` and a
compact JSON :class:`Claim` as payload. The issuer is an account nkey
(``A...``), the key type that issues JWTs in NATS.

A claim binds the whole request: ``sub`` is the exact subject it is sent to
(namespace, verb and target: the node, the bid, the workload) and
``body_sha256`` the sha256 of the body bytes as sent. Nothing of a signed
request can change in flight, and it is good for one subject only: a deploy
signed for one node or bid is refused by every other. Any language signs the
bytes it sends; there is no canonical form to reproduce.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Annotated

import nkeys
from pydantic import Field, model_validator

from nex.api import tokens
from nex.api.errors import ClaimExpired
from nex.api.models import Strict
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
        """The control verb the claim's subject names (DEPLOY, UNDEPLOY...)."""
        return self.sub.split(".")[4]

    @property
    def namespace(self) -> str:
        """The namespace the claim's subject names."""
        return self.sub.split(".")[2]


@dataclass(frozen=True)
class SignedRequest:
    """A control request as it arrived: the subject, the body bytes and the ``Nex-Claim`` header."""

    subject: str
    body: bytes
    token: str | None = None


def new_jti() -> str:
    """A new claim id: random, unique enough to be remembered once by the fleet's ledger."""
    return secrets.token_urlsafe(18)


def sha256_bytes(data: bytes) -> str:
    """The hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sign(claim: Claim, issuer: nkeys.KeyPair) -> str:
    """The compact token of ``claim`` signed by ``issuer`` (whose public key must be ``claim.iss``)."""
    return tokens.sign(HEADER, claim, issuer)


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
    return tokens.decode(token, HEADER, Claim, "claim", MAX_CLAIM_BYTES)


def check_time(claim: Claim, now: float, skew: float = CLOCK_SKEW_S) -> None:
    """Raises ClaimExpired unless ``now`` lies in [iat - skew, exp + skew]."""
    if now + skew < claim.iat:
        raise ClaimExpired(f"issued {claim.iat - now:.0f}s in the future")
    if now - skew > claim.exp:
        raise ClaimExpired(f"expired {now - claim.exp:.0f}s ago")
