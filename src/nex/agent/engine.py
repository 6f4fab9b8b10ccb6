"""What an agent needs from the engine that runs its functions (QuickJS, wasmtime).

An agent process holds one :class:`Engine`. For every function it loads, the
engine builds a :class:`Sandbox` on that function's own thread
(:mod:`nex.agent.worker`), and every later call of the sandbox happens on that
thread too: engines may bind their objects to the thread that made them. An engine
that declares ``parallel_calls`` lets a function with ``max_concurrency`` run its
calls on several threads at once instead.
Everything else (subscriptions, replies, logs, events, threads) is the agent's
and the same for every engine (:mod:`nex.agent.function`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from nex.agent import protocol
from nex.api.errors import FunctionError

# FunctionError.kind of a failed call
ERROR = "error"
EXIT = "exit"
TIMEOUT = "timeout"
OUT_OF_MEMORY = "out_of_memory"


class CompileError(Exception):
    """The artifact does not compile, or is not a function of this engine. One line."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one call produced: reply bytes or an error, and the log lines it wrote."""

    data: bytes = b""
    error: FunctionError | None = None
    duration_ms: float = 0.0
    logs: list[tuple[str, str]] = field(default_factory=list)


class Sandbox(Protocol):
    """One compiled function, confined to the thread that built it."""

    def startup_logs(self) -> list[tuple[str, str]]:
        """Log lines (stream, text) written while the function was set up."""
        ...

    def invoke(self, subject: str, payload: bytes) -> Outcome:
        """Run one call. A failure of the function is an Outcome with an error, never an exception."""
        ...

    def memory_used(self) -> int:
        """Bytes of engine memory the function holds (or held in its last call)."""
        ...

    def close(self) -> None:
        ...


class Engine(Protocol):
    """Builds sandboxes; one per agent process.

    The agent makes it once connected to NATS, handing its constructor the host services
    (:class:`nex.agent.hostservices.HostServices`), which it scopes to each function it builds
    (:data:`nex.agent.agent.EngineMaker`); built without them, its functions get none."""

    name: str  # "javascript", "wasm": names the agent in logs, threads and errors
    # Its sandboxes' invoke may run on several threads at once (each call on one thread):
    # a function with max_concurrency then runs that many calls in parallel.
    parallel_calls: bool

    def build(self, load: protocol.Load) -> Sandbox:
        """On the function's thread; raises CompileError for an artifact that cannot run."""
        ...

    def close(self) -> None:
        """Once every sandbox is closed."""
        ...
