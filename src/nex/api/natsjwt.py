"""NATS JWTs (decentralized auth, v2 claims) and creds files: pure encoding, no I/O.

A NATS JWT is ``b64url(header) . b64url(claims) . b64url(signature)`` without
padding; the header is ``{"typ":"JWT","alg":"ed25519-nkey"}`` and the signature is
Ed25519 by the issuer's nkey over the first two parts with their dot. The claim
layout follows nats-io/jwt v2 (``operator_claims.go``, ``account_claims.go``,
``user_claims.go``): ``jti``, ``iat``, ``iss``, ``name``, ``sub`` and a ``nats``
object with ``type`` and ``version: 2``. ``jti`` is the base32 (no padding)
sha256 of the claims without it; the server does not check it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
UNLIMITED = -1


class Signer(Protocol):
    """An nkeys.KeyPair, or anything that signs with Ed25519 and knows its public key."""

    @property
    def public_key(self) -> bytes:
        """The signer's public key, as nkey text bytes."""

    def sign(self, data: bytes) -> bytes:
        """The Ed25519 signature of ``data``."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def encode(claims: dict[str, Any], signer: Signer) -> str:
    """Sign ``claims`` (``iss`` set to the signer, ``iat`` and ``jti`` filled in) into a JWT."""
    body = {**claims, "iss": signer.public_key.decode()}
    body.setdefault("iat", int(time.time()))
    body.pop("jti", None)
    body["jti"] = base64.b32encode(hashlib.sha256(_json(body)).digest()).rstrip(b"=").decode()
    signing_input = f"{_b64(_json(HEADER))}.{_b64(_json(body))}"
    return f"{signing_input}.{_b64(signer.sign(signing_input.encode()))}"


def decode_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (for tests and display)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@dataclass(frozen=True)
class Permissions:
    """Subject permissions of a user: the server checks deny before allow; empty allow: all."""

    pub_allow: list[str] = field(default_factory=list)
    pub_deny: list[str] = field(default_factory=list)
    sub_allow: list[str] = field(default_factory=list)
    sub_deny: list[str] = field(default_factory=list)
    responses: int | None = None  # allow this many replies to each request received

    def claims(self) -> dict[str, Any]:
        """These permissions as the ``pub``/``sub``/``resp`` claims of a user JWT."""
        def part(allow: list[str], deny: list[str]) -> dict[str, list[str]]:
            return {k: v for k, v in (("allow", allow), ("deny", deny)) if v}
        out: dict[str, Any] = {"pub": part(self.pub_allow, self.pub_deny),
                               "sub": part(self.sub_allow, self.sub_deny)}
        if self.responses is not None:
            out["resp"] = {"max": self.responses, "ttl": 0}
        return out


def operator_claims(operator_public: str, name: str, system_account: str) -> dict[str, Any]:
    """The claims of an operator JWT naming its system account."""
    return {"sub": operator_public, "name": name,
            "nats": {"type": "operator", "version": 2, "system_account": system_account}}


def account_claims(account_public: str, name: str, jetstream: bool = True,
                   signing_keys: list[str] | None = None) -> dict[str, Any]:
    """The claims of an account JWT, with JetStream limits when ``jetstream``."""
    limits: dict[str, Any] = {"subs": UNLIMITED, "data": UNLIMITED, "payload": UNLIMITED,
                              "imports": UNLIMITED, "exports": UNLIMITED, "wildcards": True,
                              "conn": UNLIMITED, "leaf": UNLIMITED}
    if jetstream:
        limits.update({"mem_storage": UNLIMITED, "disk_storage": UNLIMITED,
                       "streams": UNLIMITED, "consumer": UNLIMITED})
    nats: dict[str, Any] = {"type": "account", "version": 2, "limits": limits,
                            "default_permissions": {"pub": {}, "sub": {}}}
    if signing_keys:
        nats["signing_keys"] = list(signing_keys)
    return {"sub": account_public, "name": name, "nats": nats}


def user_claims(user_public: str, name: str, permissions: Permissions | None = None,
                issuer_account: str | None = None, expires: int | None = None) -> dict[str, Any]:
    """The claims of a user JWT, with its subject ``permissions``."""
    nats: dict[str, Any] = {"type": "user", "version": 2, "subs": UNLIMITED,
                            "data": UNLIMITED, "payload": UNLIMITED}
    nats.update((permissions or Permissions()).claims())
    if issuer_account:
        nats["issuer_account"] = issuer_account  # when signed by an account signing key
    claims: dict[str, Any] = {"sub": user_public, "name": name, "nats": nats}
    if expires is not None:
        claims["exp"] = expires
    return claims


def creds_file(user_jwt: str, user_seed: str) -> str:
    """The text of a ``.creds`` file, as ``nsc`` writes it (nats clients read it directly)."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )
