"""The node <-> agent protocol: newline-delimited JSON, pure and I/O-free.

The node writes requests to the agent's stdin; the agent writes replies and events
to its stdout. Every request carries a ``seq``; the agent answers each one exactly
once with ``{"seq": n, "ok": true, ...}`` or ``{"seq": n, "ok": false, "error": "..."}``,
in any order. The agent also sends ``{"event": "ready"}`` once it is connected to NATS.

Requests:

- ``load``: run a function: subscribe to its triggers. Loading an id that is
  already loaded is a no-op, so a node may safely repeat a load after an agent restart.
- ``unload``: unsubscribe a function, let in-flight calls finish for up to
  ``grace_ms``, free it. Unloading an unknown id succeeds.
- ``stats``: counters of every loaded function.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from nex.api.hops import MAX_HOPS, MAX_HOPS_LIMIT

MAX_LINE_BYTES = 64 * 1024 * 1024

# The environment of an agent process: its NATS ConnectOptions as JSON, its node's id,
# and (wasm) the directory where it keeps compiled modules.
ENV_CONNECT = "NEX_AGENT_CONNECT"
ENV_NODE_ID = "NEX_NODE_ID"
ENV_CACHE_DIR = "NEX_AGENT_CACHE_DIR"
# HostSettings as JSON: what the host services of the agent's functions may do.
ENV_HOST_SERVICES = "NEX_AGENT_HOST_SERVICES"

# error_kind of a failed reply
BAD_ARTIFACT = "bad_artifact"
BAD_REQUEST = "bad_request"  # the load asks for something impossible (an async subject another stream has)
INTERNAL = "internal"


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


HTTP_METHODS = ("GET", "POST", "PUT", "DELETE")


class HostSettings(_Message):
    """The node's settings for its agents: the host services of functions (nex.agent.hostservices),
    the events of calls (nex.agent.activity) and where the agent's threads run (nex.agent.cpus)."""

    replicas: int = Field(default=1, ge=1, le=5, description="of the buckets created on first use")
    http_allow_hosts: list[str] = Field(default_factory=list, description="exact host or *.domain; none: no HTTP")
    http_allow_methods: list[str] = Field(default_factory=lambda: list(HTTP_METHODS))
    otel_endpoint: str | None = Field(default=None, description="OTLP/HTTP base URL: spans of invocations go there")
    max_hops: int = Field(default=MAX_HOPS, ge=1, le=MAX_HOPS_LIMIT, description="see nex.api.hops")
    # The events of calls (nex.agent.activity)
    stats_interval_s: float = Field(default=5.0, gt=0, le=3600, description="how often function_stats go out")
    live_call_events: bool = Field(default=False, description="a function_invoked event per successful call, "
                                   "on a subject no stream keeps")
    failure_events_per_s: float = Field(default=2.0, ge=0, description="function_failed events per function "
                                        "and second, past the burst")
    failure_events_burst: int = Field(default=20, ge=0, description="function_failed events per function at once")
    # Where the agent's threads run (nex.agent.cpus)
    colocate_calls: bool = Field(default=True, description="the loop and the threads of quick calls share one CPU")


class RetrySettings(_Message):
    max_attempts: int = 5
    backoff_ms: int = 1000
    max_backoff_ms: int = 60_000


class TriggerSubscription(_Message):
    subject: str
    queue: str
    mode: Literal["sync", "async"] = "sync"
    schedule: str | None = Field(default=None, description="cron expression (UTC); mode is then async")
    retry: RetrySettings | None = Field(default=None, description="async: None means RetrySettings()")


class Load(_Message):
    op: Literal["load"] = "load"
    seq: int = 0
    workload_id: str
    name: str
    namespace: str
    source: str = Field(default="", description="javascript: the script")
    artifact_path: str | None = Field(default=None, description="wasm: the module file, on the agent's host")
    artifact_sha256: str | None = Field(default=None, description="wasm: names the compiled module in the cache")
    triggers: list[TriggerSubscription]
    timeout_ms: int = Field(gt=0)
    memory_bytes: int = Field(gt=0)
    env: dict[str, str] = Field(default_factory=dict)
    max_concurrency: int | None = Field(default=None, gt=0, description="calls at once; past it 429 at once")


class Unload(_Message):
    op: Literal["unload"] = "unload"
    seq: int = 0
    workload_id: str
    grace_ms: int = Field(default=5000, ge=0)


class Stats(_Message):
    op: Literal["stats"] = "stats"
    seq: int = 0


Request = Annotated[Load | Unload | Stats, Field(discriminator="op")]


# Upper bounds (ms, inclusive) of the latency buckets an agent counts calls into; one more
# bucket past the last holds the slower calls. Fixed here so node and agent agree on them.
LATENCY_BOUNDS_MS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0)


class FunctionStats(_Message):
    workload_id: str
    invocations: int = 0
    errors: int = 0
    memory_bytes: int = 0
    rejected: int = Field(default=0, description="calls answered 429 (max_concurrency reached)")
    latency_buckets: list[int] = Field(
        default_factory=list, description="calls per LATENCY_BOUNDS_MS bucket, then the slower ones; not cumulative")
    latency_sum_ms: float = 0.0
    failure_events_dropped: int = Field(default=0, description="failure events the per-function rate limit "
                                        "did not publish")
    recent: dict[str, float] | None = Field(default=None, description="of the last function_stats sent: "
                                            "calls_per_s, p50_ms, p90_ms, p99_ms")


class Reply(_Message):
    seq: int
    ok: bool
    error: str | None = None
    error_kind: str | None = None
    functions: list[FunctionStats] | None = Field(default=None, description="stats replies")


class Ready(_Message):
    event: Literal["ready"] = "ready"


AgentMessage = Reply | Ready

_request_adapter: TypeAdapter[Load | Unload | Stats] = TypeAdapter(Request)
_agent_message_adapter: TypeAdapter[Reply | Ready] = TypeAdapter(AgentMessage)


class ProtocolError(ValueError):
    """A line that is not a valid message."""


def encode(message: _Message) -> bytes:
    """One line, newline included."""
    return message.model_dump_json(exclude_none=True).encode() + b"\n"


def decode_request(line: bytes) -> Load | Unload | Stats:
    try:
        return _request_adapter.validate_json(line)
    except ValueError as exc:
        raise ProtocolError(f"bad request: {_first_line(exc)}") from None


def decode_agent_message(line: bytes) -> Reply | Ready:
    try:
        return _agent_message_adapter.validate_json(line)
    except ValueError as exc:
        raise ProtocolError(f"bad agent message: {_first_line(exc)}") from None


def request_seq(line: bytes) -> int | None:
    """The seq of a request that failed to decode, so the agent can still answer it."""
    try:
        seq = TypeAdapter(dict).validate_json(line).get("seq")
    except ValueError:
        return None
    return seq if isinstance(seq, int) else None


def ok(seq: int, functions: list[FunctionStats] | None = None) -> Reply:
    return Reply(seq=seq, ok=True, functions=functions)


def failed(seq: int, error: str, kind: str = INTERNAL) -> Reply:
    return Reply(seq=seq, ok=False, error=" ".join(error.split()), error_kind=kind)


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]
