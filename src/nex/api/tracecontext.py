"""W3C trace context (``traceparent``) as Nex carries it on NATS messages: pure, no I/O.

A ``traceparent`` header on the message that triggers a function makes the
function's invocation a span of that trace, and every message or HTTP request
the function then sends through its host services carries a ``traceparent`` of
the same trace, with a span id of its own (see docs/observability.md).

This module only parses and formats the header, so that the client and the
wire contract need no tracing library; recording and exporting spans is the
agent's business (:mod:`nex.agent.tracing`).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

TRACEPARENT = "traceparent"
"""The header name (W3C Trace Context, level 1)."""

_FORMAT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_INVALID_TRACE_ID = "0" * 32
_INVALID_SPAN_ID = "0" * 16
SAMPLED = 0x01


@dataclass(frozen=True, slots=True)
class TraceParent:
    """One span's place in a trace: ``00-<trace id>-<span id>-<flags>``."""

    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16 lowercase hex digits
    flags: int = SAMPLED

    @classmethod
    def parse(cls, header: str | None) -> TraceParent | None:
        """The header's value, or None when it is absent or not a valid traceparent (the spec says:
        ignore it then, and start afresh)."""
        if not header:
            return None
        match = _FORMAT.fullmatch(header.strip())
        if match is None:
            return None
        version, trace_id, span_id, flags, rest = match.groups()
        if version == "ff" or (version == "00" and rest) or trace_id == _INVALID_TRACE_ID \
                or span_id == _INVALID_SPAN_ID:
            return None
        return cls(trace_id, span_id, int(flags, 16))

    @classmethod
    def new(cls) -> TraceParent:
        """The root span of a new, sampled trace."""
        return cls(new_trace_id(), new_span_id())

    def child(self) -> TraceParent:
        """A span of the same trace whose parent is this one."""
        return TraceParent(self.trace_id, new_span_id(), self.flags)

    @property
    def sampled(self) -> bool:
        """Whether the trace's caller records it (the sampled flag)."""
        return bool(self.flags & SAMPLED)

    def __str__(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"


def new_trace_id() -> str:
    """A new random trace id: 32 hex digits."""
    while (trace_id := secrets.token_hex(16)) == _INVALID_TRACE_ID:
        pass
    return trace_id


def new_span_id() -> str:
    """A new random span id: 16 hex digits."""
    while (span_id := secrets.token_hex(8)) == _INVALID_SPAN_ID:
        pass
    return span_id
