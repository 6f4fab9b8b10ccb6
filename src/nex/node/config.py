"""Node configuration: defaults, an optional TOML or JSON file, then command-line flags."""

from __future__ import annotations

import json
import os
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nex.placement.sampling import SAMPLE_THRESHOLD
from nex.api.hops import MAX_HOPS, MAX_HOPS_LIMIT
from nex.api.keys import PREFIX_ACCOUNT, KeyDecodeError, decode_public
from nex.api.models import DEFAULT_STOP_GRACE_S, describe_validation_error
from nex.api.subjects import TOKEN_PATTERN, is_token, namespace_subject_problem, pattern_problem


class ConfigError(ValueError):
    pass


class SandboxMode(StrEnum):
    AUTO = "auto"  # the OCI runtime when it works here, else plain processes and a loud warning
    OCI = "oci"  # the OCI runtime, or refuse to start
    GVISOR = "gvisor"  # gVisor's runsc, or refuse to start
    NONE = "none"  # plain processes


def default_state_dir() -> Path:
    return Path(platformdirs.user_data_dir("nex")) / "node"


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, pattern=TOKEN_PATTERN)
    tags: dict[str, str] = Field(default_factory=dict)
    state_dir: Path = Field(default_factory=default_state_dir)
    server: str | None = Field(default=None, description="NATS URL(s); none: start an embedded server")
    port: int = Field(default=4222, ge=0, le=65535, description="port of the embedded server")
    creds: str | None = None
    user: str | None = None
    password: str | None = None
    nkey: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    auth: bool = Field(default=False, description="start the embedded server in operator (JWT) mode")
    account_seed: str | None = Field(
        default=None, description="seed file of the NATS account (or a signing key of it) to mint "
        "workload credentials with, on an external operator-mode server")
    account: str | None = Field(default=None, description="the account's public key, when account_seed "
                                "is a signing key")
    stop_grace_s: float = Field(default=DEFAULT_STOP_GRACE_S, ge=0, le=600)
    lameduck_s: float = Field(default=10.0, ge=0, le=3600, description="lame duck period before exit")
    heartbeat_s: float = Field(default=10.0, gt=0, le=3600)
    logs_stream_bytes: int = Field(default=128 << 20, gt=0)
    events_stream_bytes: int = Field(default=64 << 20, gt=0, description="NEX_EVENTS: function_stats, failed "
                                     "calls, heartbeats (what traffic and time make)")
    audit_stream_bytes: int = Field(default=256 << 20, gt=0, description="NEX_AUDIT: security and lifecycle "
                                    "events; the oldest go first past this size")
    audit_max_age_s: float = Field(default=90 * 86400, ge=0, description="NEX_AUDIT keeps an event this long; "
                                   "0: until audit_stream_bytes pushes it out")
    rejection_events_per_s: float = Field(default=20.0, ge=0, description="request_rejected events the node "
                                          "records a second past the burst; the rest are counted in the next")
    rejection_events_burst: int = Field(default=200, ge=0, description="request_rejected events recorded at once")
    sandbox: SandboxMode = Field(default=SandboxMode.AUTO, description="how native workloads and containers "
                                 "are isolated: auto (runc when it works, else plain processes), oci, gvisor, none")
    gvisor_platform: Literal["systrap", "ptrace", "kvm"] | None = Field(
        default=None, description="--sandbox gvisor: runsc's platform; none: the first of systrap, ptrace that "
        "runs a container here (kvm only when named: it hangs on nested hosts)")
    warm_agents: bool = Field(default=True, description="start the function agents (JavaScript, Wasm) with "
                              "the node, so that no deploy waits for one; false: each starts with its first "
                              "function (a process of about 40 MiB each)")
    image_disk_budget_bytes: int = Field(
        default=10 << 30, gt=0, description="disk for unpacked OCI images: images no workload uses are "
        "evicted to make room, an image that does not fit is refused")
    trusted_issuers: list[str] = Field(
        default_factory=list, description="account nkeys (A...) whose signed requests run; empty: dev mode")
    admin_issuers: list[str] = Field(
        default_factory=list, description="account nkeys that may also stop any workload")
    deny_triggers: list[str] = Field(
        default_factory=list, description="subjects no trigger may overlap, besides the reserved ones")
    namespace_subjects: dict[str, list[str]] | None = Field(
        default=None, description="namespace -> subject patterns its triggers may use besides its own "
        "nex.<ns>.> (e.g. {payments = [\"pay.>\"]}); a namespace not listed gets only nex.<ns>.>; "
        "none: trigger subjects outside nex.* are open to every namespace")
    # -- artifacts (docs/security.md, "Artifacts") --
    artifact_roots: list[Path] = Field(
        default_factory=list, description="directories file:// artifacts may come from; none by default: "
        "every file:// artifact is refused (deploy from the Object Store instead)")
    max_artifact_bytes: int = Field(default=1 << 30, gt=0, description="the largest artifact the node "
                                    "fetches; a larger one is refused before it is read")
    # -- the fleet (docs/operations.md) --
    replicas: int | None = Field(default=None, ge=1, le=5, description="JetStream replicas of the streams and "
                                 "buckets Nex creates; none: min(3, the servers of the JetStream cluster) "
                                 "(nex.jsreplicas)")
    registry_interval_s: float = Field(default=2.0, gt=0, le=600,
                                       description="how often the node rewrites its NEX_NODES entry")
    node_timeout_s: float = Field(default=6.0, gt=0, le=3600,
                                  description="TTL of NEX_NODES entries: a node silent this long is gone")
    bid_ttl_s: float = Field(default=10.0, gt=0, le=600, description="how long an unused bid holds")
    bid_hold_limit_mib: int | None = Field(
        default=None, gt=0, description="memory one issuer's outstanding bids may hold on this node; "
        "default: half the node's memory")
    reconciler: bool = Field(default=True, description="stand for the fleet's reconciler lease")
    reconcile_interval_s: float = Field(default=1.0, gt=0, le=600)
    sample_threshold: int = Field(
        default=SAMPLE_THRESHOLD, ge=0, le=1_000_000, description="past this many nodes in NEX_NODES, the "
        "reconciler's auctions ask the eligible nodes, or a sample of them, not every node (nex.placement.sampling)")
    lease_s: float = Field(default=5.0, gt=0, le=600, description="TTL of the reconciler lease")
    fleet_keys: Path | None = Field(
        default=None, description="directory with the fleet's issuer.nk and xkey.xk, the same on every node "
        "that may reconcile; default: <state_dir>/fleet, created on first use")

    # -- host services of functions (docs/functions.md) --
    http_allow_hosts: list[str] = Field(
        default_factory=list, description="hosts functions may call over HTTP: exact names or *.example.com; "
        "none by default")
    http_allow_methods: list[str] = Field(default_factory=lambda: ["GET", "POST", "PUT", "DELETE"],
                                          description="HTTP methods functions may use")
    max_hops: int = Field(default=MAX_HOPS, ge=1, le=MAX_HOPS_LIMIT,
                          description="how deep a chain of functions triggering one another may go (the Nex-Hop"
                          " header): a message past it is not run")

    # -- observability (docs/observability.md) --
    metrics_port: int | None = Field(default=None, ge=0, le=65535,
                                     description="serve Prometheus metrics on /metrics at this port; none: off")
    metrics_host: str = Field(default="127.0.0.1", min_length=1, description="address the metrics endpoint binds")
    function_stats_interval_s: float = Field(default=5.0, gt=0, le=3600, description="how often a function "
                                             "with calls sends its function_stats event")
    live_call_events: bool = Field(default=False, description="a function_invoked event per successful call, on a "
                                   "subject no stream keeps (nex events -f, tracing); off by default: it costs "
                                   "each call a publish (docs/performance.md)")
    failure_events_per_s: float = Field(default=2.0, ge=0, description="function_failed events a function may "
                                        "send per second past the burst; the rest are counted, not sent")
    failure_events_burst: int = Field(default=20, ge=0, description="function_failed events a function may send "
                                      "at once")
    colocate_calls: bool = Field(default=True, description="a function agent's event loop and the threads of "
                                 "its quick calls share one CPU, moved off a CPU other processes keep busy: a call's "
                                 "hand-over then wakes no other CPU (docs/performance.md); false: the kernel places "
                                 "every thread")
    otel_endpoint: str | None = Field(
        default_factory=lambda: os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
        description="OTLP/HTTP endpoint the function agents export invocation spans to; "
        "default: $OTEL_EXPORTER_OTLP_ENDPOINT; none: no export")

    @field_validator("artifact_roots")
    @classmethod
    def _absolute_roots(cls, roots: list[Path]) -> list[Path]:
        for root in roots:
            if not root.is_absolute():
                raise ValueError(f"artifact root {str(root)!r} must be an absolute path")
        return roots

    @field_validator("otel_endpoint")
    @classmethod
    def _otel_endpoint(cls, endpoint: str | None) -> str | None:
        if endpoint and not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"invalid OTLP endpoint {endpoint!r}: give an http:// or https:// URL")
        return endpoint or None

    @field_validator("http_allow_methods")
    @classmethod
    def _http_methods(cls, methods: list[str]) -> list[str]:
        methods = [method.upper() for method in methods]
        unknown = sorted(set(methods) - {"GET", "POST", "PUT", "DELETE"})
        if unknown:
            raise ValueError(f"functions can only use GET, POST, PUT and DELETE, not {', '.join(unknown)}")
        return methods

    @field_validator("http_allow_hosts")
    @classmethod
    def _http_hosts(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            name = host.removeprefix("*.")
            if not name or "*" in name or any(c in name for c in "/: @"):
                raise ValueError(f"invalid HTTP host {host!r}: give a host name or *.domain")
        return [host.lower() for host in hosts]

    @model_validator(mode="after")
    def _timeouts(self) -> NodeConfig:
        if self.node_timeout_s < 2 * self.registry_interval_s:
            raise ValueError("node_timeout_s must be at least twice registry_interval_s")
        return self

    @field_validator("trusted_issuers", "admin_issuers")
    @classmethod
    def _account_keys(cls, keys: list[str]) -> list[str]:
        for index, key in enumerate(keys):
            try:
                decode_public(PREFIX_ACCOUNT, key)
            except KeyDecodeError:
                # Not echoed: a mistaken entry may be a seed.
                raise ValueError(f"entry {index} is not an account public key (A...)") from None
        return keys

    @field_validator("account")
    @classmethod
    def _account_key(cls, key: str | None) -> str | None:
        if key is not None:
            cls._account_keys([key])
        return key

    @field_validator("namespace_subjects")
    @classmethod
    def _namespace_subjects(cls, confined: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        for namespace, patterns in (confined or {}).items():
            if not is_token(namespace):
                raise ValueError(f"namespace_subjects: invalid namespace {namespace!r}")
            for pattern in patterns:
                problem = pattern_problem(pattern) or namespace_subject_problem(namespace, pattern)
                if problem is not None:
                    raise ValueError(f"namespace_subjects: {namespace}: {pattern!r} {problem}")
        return confined

    @field_validator("tags")
    @classmethod
    def _tag_names(cls, tags: dict[str, str]) -> dict[str, str]:
        for key in tags:
            if not key or any(c in key for c in "=, "):
                raise ValueError(f"invalid tag name {key!r}")
        return tags


def parse_tags(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` → dict; raises ConfigError on a pair without '='."""
    tags: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"invalid tag {pair!r}: use key=value")
        tags[key.strip()] = value.strip()
    return tags


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid {path.suffix.lstrip('.') or 'TOML'}: {exc}") from None


def load_config(path: Path | None, overrides: dict[str, Any]) -> NodeConfig:
    """File values, then every override that is not None."""
    values = read_config_file(path) if path else {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a table/object at the top")
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return NodeConfig.model_validate(values)
    except ValidationError as exc:
        where = f"config file {path}" if path else "configuration"
        raise ConfigError(f"{where}: {describe_validation_error(exc).removeprefix('invalid request: ')}") from None
