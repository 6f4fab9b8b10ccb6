"""The audit record of a rejected control request: who asked, what, and why not.

Pure functions on the request's subject, reply inbox and body, below the I/O.
The record never holds the request body: only the verb and target (from the
subject), the reply inbox prefix, the issuer a ``Nex-Claim`` header names when it
has the shape of an nkey public key (as claimed: not verified), and the error. Environment values that
happen to appear in the error message are blanked, so neither a plain nor a
sealed secret reaches the feed.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from nex.api import subjects
from nex.api.errors import NexError
from nex.api.models import MAX_REQUEST_BYTES
from nex.node.feeds import SYSTEM_NAMESPACE

# The codes that mean "the node refused this request" rather than "the node failed".
REJECTION_CODES = frozenset({400, 403, 404, 409, 429})

# An nkey public key: 56 base32 characters. Anything else in a claim is not echoed.
_PUBLIC_KEY = re.compile(r"^[A-Z2-7]{56}$")
_MAX_MESSAGE = 512
_MIN_REDACTED = 3
REDACTED = "[redacted]"


def is_rejection(error: NexError) -> bool:
    return error.code in REJECTION_CODES


def rejection_namespace(subject: str) -> str:
    """The namespace whose feed gets the record; ``system`` when the subject's is not a valid one."""
    try:
        namespace = subjects.namespace_of(subject)
    except ValueError:
        return SYSTEM_NAMESPACE
    return namespace if subjects.is_token(namespace) else SYSTEM_NAMESPACE


def rejection_record(subject: str, reply_to: str | None, data: bytes, error: NexError,
                     token: str | None = None) -> dict[str, Any]:
    """The data of a ``request_rejected`` event (who, what, why), free of the body and its secrets.
    ``token``: the request's ``Nex-Claim`` header."""
    tokens = subject.split(".")
    body = _decode_body(data)
    return {
        "who": {
            "subject": subject,
            "reply_prefix": _inbox_prefix(reply_to),
            "claimed_issuer": _claim_issuer(token),
        },
        "what": {
            "verb": tokens[4] if len(tokens) > 4 else None,
            "target": tokens[5] if len(tokens) > 5 else None,
            "subject": subject,
            "body_bytes": len(data),
        },
        "why": {"code": error.code, "message": _redact(error.message, _secrets(body))[:_MAX_MESSAGE]},
    }


def _inbox_prefix(reply_to: str | None) -> str | None:
    # nats-py's request inboxes are _INBOX.<client nuid>.<request token>: the prefix names the client.
    if not reply_to:
        return None
    return reply_to.rsplit(".", 1)[0] if "." in reply_to else reply_to


def _decode_body(data: bytes) -> dict[str, Any] | None:
    if not data or len(data) > MAX_REQUEST_BYTES:
        return None
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


def _claim_issuer(token: str | None) -> str | None:
    """The issuer a claim token names, read defensively (its signature is not checked here)."""
    issuer = _jwt_issuer(token) if isinstance(token, str) and token.count(".") == 2 else None
    return issuer if isinstance(issuer, str) and _PUBLIC_KEY.fullmatch(issuer) else None


def _jwt_issuer(token: str) -> Any:
    payload = token.split(".")[1]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None
    return decoded.get("iss") if isinstance(decoded, dict) else None


def _secrets(body: dict[str, Any] | None) -> list[str]:
    """Every string under a top-level field named like ``env`` (plain or sealed), longest first."""
    values: list[str] = []
    for key, env in (body or {}).items():
        if "env" not in key.lower():
            continue
        if isinstance(env, dict):
            values += [v for v in env.values() if isinstance(v, str)]
        elif isinstance(env, str):  # a sealed environment sent as one blob
            values.append(env)
    return sorted((v for v in values if len(v) >= _MIN_REDACTED), key=len, reverse=True)


def _redact(message: str, secrets: list[str]) -> str:
    for secret in secrets:
        message = message.replace(secret, REDACTED)
    return message
