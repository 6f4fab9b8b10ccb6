"""The hop count of function invocations: how deep in a chain of functions a message is.

A function that publishes to its own trigger, or to another function's that
publishes back, would run forever. So each message a function sends while it
runs (a publish, a request, an async invocation, the reply of an async
invocation) carries ``Nex-Hop: n + 1``, where n is the hop of the invocation that
sent it: the ``Nex-Hop`` of the message that triggered it, 0 without one. A
message that arrives with a hop past the limit (``MAX_HOPS`` unless the node's config
sets ``max_hops``) is not run: it gets an error
reply and an ``invocation_loop`` event. A chain of functions is therefore at most
``MAX_HOPS + 1`` invocations long, like the call depth of Cloudflare Workers (16 too).

A client may send any hop it likes, or none: the count bounds what functions do to
each other, not what a client sends. A function cannot set it: the agent writes it
over the function's own header of that name, whatever its case.
"""

from __future__ import annotations

from collections.abc import Mapping

from nex.api.errors import FunctionError

HOP_HEADER = "Nex-Hop"
MAX_HOPS = 16  # the default; a node's config may set another (max_hops)
MAX_HOPS_LIMIT = 1024
_MAX_DIGITS = 9


def hop_of(headers: Mapping[str, str] | None) -> int:
    """The hop a message arrives with: its ``Nex-Hop``, 0 without one or with one that is not a count."""
    value = headers.get(HOP_HEADER) if headers else None
    if not value or len(value) > _MAX_DIGITS or not value.isascii() or not value.isdigit():
        return 0
    return int(value)


def past_limit(hop: int, limit: int = MAX_HOPS) -> bool:
    """Whether a call at hop ``hop`` is past the limit of chained invocations."""
    return hop > limit


def onward(headers: Mapping[str, str] | None, hop: int) -> dict[str, str]:
    """``headers`` for a message sent by an invocation of hop ``hop``: with ``Nex-Hop: hop + 1``,
    and without any other spelling of that header."""
    kept = {name: value for name, value in (headers or {}).items() if name.lower() != HOP_HEADER.lower()}
    kept[HOP_HEADER] = str(hop + 1)
    return kept


LOOP = "loop"  # FunctionError.kind of a call refused here


def loop_error(hop: int, limit: int = MAX_HOPS) -> FunctionError:
    """The error a message past the limit is answered with."""
    return FunctionError(f"invocation loop: the message arrived with {HOP_HEADER} {hop}, past the limit of"
                         f" {limit} functions triggering one another: not run", LOOP)
