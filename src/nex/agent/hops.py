"""The hop (:mod:`nex.api.hops`) of the invocation running on this thread.

An invocation runs on one thread, and its host calls run on that thread too (see
:mod:`nex.agent.tracing`), so :meth:`LoadedFunction._invoke` sets the hop here
before the call and the host services read it for every message they send.
Outside an invocation (a script's top level) the hop is 0.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from nex.api.hops import onward

_local = threading.local()


def begin(hop: int) -> None:
    _local.hop = hop


def end() -> None:
    _local.hop = 0


def current() -> int:
    return getattr(_local, "hop", 0)


def outgoing(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The headers of a message the invocation on this thread sends."""
    return onward(headers, current())
