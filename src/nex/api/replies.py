"""What a well-formed control reply is, per verb: pure, on bytes and headers.

A reply is either the verb's success model, or an error whose
``Nats-Service-Error-Code`` header matches the ``code`` of an ``{"error": ...}``
body. Fuzzers and conformance checks of other node implementations use this.
"""

from __future__ import annotations

from typing import Mapping

from pydantic import BaseModel, ValidationError

from nex.api import subjects
from nex.api.errors import ERROR_CODE_HEADER, ERROR_HEADER
from nex.api.models import (
    AuctionReply, ErrorResponse, LameDuckResponse, NodeInfo, NodePing, UndeployResponse, WorkloadPing, WorkloadSummary,
)

SUCCESS_MODELS: dict[str, type[BaseModel]] = {
    subjects.PING: NodePing,
    subjects.INFO: NodeInfo,
    subjects.DEPLOY: WorkloadSummary,
    subjects.UNDEPLOY: UndeployResponse,
    subjects.WPING: WorkloadPing,
    subjects.LAMEDUCK: LameDuckResponse,
    subjects.AUCTION: AuctionReply,
}


class MalformedReply(Exception):
    """A reply that is neither the verb's success model nor a well-formed error."""


def check_reply(verb: str, data: bytes, headers: Mapping[str, str] | None) -> int | None:
    """The error code of a well-formed reply, or None for a valid success; raises MalformedReply."""
    code_text = (headers or {}).get(ERROR_CODE_HEADER)
    try:
        if code_text is None:
            SUCCESS_MODELS[verb].model_validate_json(data)
            return None
        error = ErrorResponse.model_validate_json(data).error
    except ValidationError as exc:
        raise MalformedReply(f"{verb} reply does not validate: {exc.errors(include_url=False)[:3]}") from None
    if not code_text.isdigit() or int(code_text) != error.code:
        raise MalformedReply(f"{verb} error header {code_text!r} differs from body code {error.code}")
    if ERROR_HEADER not in (headers or {}):
        raise MalformedReply(f"{verb} error reply without a {ERROR_HEADER} header")
    return error.code
