"""The compact signed token shared by request claims and app tokens. Pure, no I/O.

Three base64url parts (no padding) joined by dots, as NATS JWTs are::

    base64url(header) "." base64url(payload) "." base64url(signature)

The signature is Ed25519 by the issuer's account nkey over the ASCII bytes
``header "." payload`` (the first two parts as sent). The payload names its
signer in ``iss``, so a token verifies on its own; whether the issuer is trusted
is the caller's question. Each kind of token has its own header ``typ``, so that
one can never pass for another.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, TypeVar

import nkeys
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from pydantic import BaseModel, ValidationError

from nex.api.errors import BadSignature, MalformedClaim
from nex.api.keys import PREFIX_ACCOUNT, KeyDecodeError, decode_public
from nex.api.models import describe_validation_error

__all__ = ["b64url_decode", "b64url_encode", "decode", "sign"]

P = TypeVar("P", bound=BaseModel)

_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def b64url_encode(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """The bytes of base64url text, padded or not."""
    if not text or not _BASE64URL.fullmatch(text):
        raise MalformedClaim("malformed claim: a part is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise MalformedClaim("malformed claim: a part is not base64url") from None


def sign(header: dict[str, Any], payload: BaseModel, issuer: nkeys.KeyPair) -> str:
    """The token of ``payload`` (whose ``iss`` must be the issuer's public key) under ``header``."""
    if issuer.public_key.decode() != getattr(payload, "iss", None):
        raise ValueError("the token's iss is not the signing key")
    head = b64url_encode(json.dumps(header, separators=(",", ":")).encode())
    body = b64url_encode(payload.model_dump_json(exclude_none=True).encode())
    signed = f"{head}.{body}"
    return f"{signed}.{b64url_encode(issuer.sign(signed.encode()))}"


def decode(token: str, header: dict[str, Any], model: type[P], what: str, max_bytes: int) -> P:
    """The verified payload of ``token``: MalformedClaim (400) when it does not decode as a
    ``what`` with ``header``, BadSignature (403) when the signature does not verify with its ``iss``."""
    if len(token) > max_bytes:
        raise MalformedClaim(f"malformed {what}: over {max_bytes} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedClaim(f"malformed {what}: expected header.payload.signature")
    header_part, payload_part, signature_part = parts
    try:
        found = json.loads(b64url_decode(header_part))
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the interpreter's limit
        raise MalformedClaim(f"malformed {what}: the header is not JSON") from None
    if found != header:
        raise MalformedClaim(f"malformed {what}: the header must be {json.dumps(header)}")
    try:
        payload = model.model_validate_json(b64url_decode(payload_part))
    except ValidationError as exc:
        raise MalformedClaim(f"malformed {what}: "
                             + describe_validation_error(exc).removeprefix("invalid request: ")) from None
    signature = b64url_decode(signature_part)
    try:
        verifier = VerifyKey(decode_public(PREFIX_ACCOUNT, getattr(payload, "iss")))
    except KeyDecodeError:
        raise MalformedClaim(f"malformed {what}: iss is not an account public key") from None
    try:
        verifier.verify(f"{header_part}.{payload_part}".encode(), signature)
    except (BadSignatureError, ValueError):
        raise BadSignature() from None
    return payload
