"""Desired state: apps, the records the fleet keeps of them, and the reconciler's lease.

An app is what ``nex apply -f app.yaml`` stores: workloads with replicas,
placement, restart policy, health check and update strategy. The reconciler
(one at a time across the fleet) keeps the running replicas equal to it.
No I/O here: the models, their validation and the revision hash.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator, model_validator

from nex.api.models import (
    Artifact, HealthCheck, Isolation, Lifecycle, Limits, NetworkMode, Strict, Token, Trigger, WorkloadType,
    check_unique_names, settle_lifecycle,
)
from nex.api.subjects import DEFAULT_NAMESPACE

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``1s``, ``500ms``, ``2m``, ``1h`` or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '1s', '500ms', '2m'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    else:
        raise ValueError(f"invalid duration {value!r}: use a number of seconds or '1s', '500ms', '2m', '1h'")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0, le=7 * 24 * 3600)]


class RestartPolicyKind(StrEnum):
    """How a replica that ended is started again: ``always``, ``on-failure`` or ``never``."""

    ALWAYS = "always"  # services: start again whatever the exit
    ON_FAILURE = "on-failure"  # start again after a failure (non-zero exit, signal, unhealthy)
    NEVER = "never"


class RestartPolicy(Strict):
    """When and how soon a failed replica is started again: the policy, the retries, the backoff."""

    policy: RestartPolicyKind = RestartPolicyKind.ON_FAILURE
    max_retries: int = Field(default=5, ge=0, le=10_000, description="restarts of one replica slot in a row")
    backoff: Duration = Field(default=1.0, description="wait before the first restart; doubles each time")
    max_backoff: Duration = Field(default=60.0, description="the longest wait between restarts")


class Placement(Strict):
    """Where an app workload's replicas may run: nodes with every one of ``tags``, spread over a tag's values."""

    tags: dict[str, str] = Field(default_factory=dict, max_length=64, description="a node must have every one")
    spread: str | None = Field(default=None, min_length=1, max_length=64,
                               description="a tag name: replicas are spread evenly over its values")


class UpdateStrategy(Strict):
    """How a changed workload rolls out: replicas replaced a few at a time, and rolled back on failure."""

    max_unavailable: int = Field(default=1, ge=0, le=1000)
    max_surge: int = Field(default=1, ge=0, le=1000)
    health_deadline: Duration = Field(default=30.0, gt=0,
                                      description="a new replica not healthy by then fails the update")
    auto_rollback: bool = Field(default=True, description="go back to the last good template on failure")

    @model_validator(mode="after")
    def _can_progress(self) -> UpdateStrategy:
        if self.max_unavailable == 0 and self.max_surge == 0:
            raise ValueError("max_unavailable and max_surge cannot both be 0: the update could never start")
        return self


class AppWorkload(Strict):
    """One workload of an app and how many replicas of it should run."""

    name: Token
    type: WorkloadType
    lifecycle: Lifecycle | None = None
    artifact: Artifact
    argv: list[str] = Field(default_factory=list, max_length=256)
    sealed_env: str | None = Field(default=None, max_length=192 * 1024,
                                   description="the env, sealed to the fleet xkey (never stored in the clear)")
    sender_xkey: str | None = Field(default=None, pattern=r"^X[A-Z2-7]{55}$")
    env_keys: list[str] = Field(default_factory=list, description="names of the sealed variables")
    triggers: list[Trigger] = Field(default_factory=list, max_length=64)
    limits: Limits = Field(default_factory=Limits)
    network: NetworkMode | None = None
    isolation: Isolation | None = Field(default=None, description="services and jobs: the weakest isolation tier "
                                        "a node running a replica may have (process < container < gvisor)")
    replicas: int = Field(default=1, ge=0, le=10_000)
    placement: Placement = Field(default_factory=Placement)
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    health: HealthCheck | None = None
    update: UpdateStrategy = Field(default_factory=UpdateStrategy)

    @model_validator(mode="after")
    def _fits_type(self) -> AppWorkload:
        settle_lifecycle(self)
        return self

    def revision(self) -> str:
        """Hash of what a replica is made from; replicas, placement, restart and update excluded,
        so scaling or moving never replaces a running replica."""
        template = self.model_dump_json(
            include={"type", "lifecycle", "artifact", "argv", "sealed_env", "triggers", "limits", "network",
                     "health"})
        if self.isolation is not None:  # only when given: the revisions of apps from before it stay as they were
            template += f"isolation={self.isolation.value}"
        return hashlib.sha256(template.encode()).hexdigest()[:12]


class AppSpec(Strict):
    """An app: a name, a namespace and its workloads, as ``nex apply`` stores it (docs/operations.md)."""

    name: Token
    namespace: Token = DEFAULT_NAMESPACE
    workloads: list[AppWorkload] = Field(min_length=1, max_length=256)

    _unique_names = field_validator("workloads")(lambda cls, workloads: check_unique_names(workloads))

    def workload(self, name: str) -> AppWorkload | None:
        """The workload called ``name``, or None when the app has none."""
        return next((w for w in self.workloads if w.name == name), None)


class AppRecord(Strict):
    """What ``nex apply`` stores under ``app.<ns>.<name>`` in NEX_APPS."""

    spec: AppSpec
    version: int = Field(ge=1, description="1 on the first apply, +1 on every change")
    applied_at: datetime
    applied_by: str | None = Field(default=None, description="informative only: who signed is the token's iss")
    previous: AppSpec | None = Field(default=None, description="the last spec that ran healthy: the rollback")
    token: str | None = Field(default=None, max_length=4096,
                              description="the app token (nex.api.appsig) that signs this record; none: unsigned")
    deleted: bool = Field(default=False, description="a tombstone: the app is deleted (its token's op is delete)")
    rolled_back: bool = Field(default=False, description="spec is the previous spec the token names: the "
                              "reconciler restored it after a failed update, without a new signature")


class RolloutState(StrEnum):
    """Where a workload's rollout stands: ``stable``, ``rolling``, ``rolled_back`` or ``failed``."""

    STABLE = "stable"  # every replica runs the current template
    ROLLING = "rolling"  # replacing replicas with the current template
    ROLLED_BACK = "rolled_back"  # the new template failed; the previous one was restored
    FAILED = "failed"  # the new template failed and there was nothing to go back to


class WorkloadRollout(Strict):
    """The reconciler's report on one workload of an app: its revision, rollout, restarts, last failure."""

    name: str
    revision: str
    state: RolloutState = RolloutState.STABLE
    message: str | None = None
    restarts: int = Field(default=0, ge=0, description="replicas started again after a failure or loss")
    last_failure: str | None = Field(default=None, max_length=500,
                                     description="the last failure of a replica the reconciler saw, with its cause")


class AppStatus(Strict):
    """What the reconciler writes under ``status.<ns>.<name>``: what it did, not what runs
    (``nex app status`` reads what runs from NEX_NODES)."""

    name: str
    namespace: str
    version: int = Field(description="the AppRecord version this status is about")
    reconciled_at: datetime
    reconciler: str = Field(description="node id of the reconciler")
    workloads: list[WorkloadRollout] = Field(default_factory=list)
    events: list[str] = Field(default_factory=list, max_length=50, description="the last actions, newest last")
    refused: str | None = Field(default=None, description="why the stored record is not acted on (then "
                                "version is the last verified one, which keeps running)")
    refused_version: int | None = Field(default=None, description="the version of the refused record, if any")


class ReconcilerLease(Strict):
    """The value of ``reconciler`` in NEX_LEASES: who reconciles, and the fleet key to seal app env to."""

    holder: str = Field(description="node id")
    name: str
    fleet_issuer: str | None = Field(default=None, description="account key the reconciler signs deploys with")
    fleet_xkey: str | None = Field(default=None, description="seal app env to this curve key")
    acquired_at: datetime


class FleetKeysRecord(Strict):
    """The value of ``fleet`` in NEX_FLEET: which keys the fleet shares (a fleet started without
    ``fleet_keys``). Written once, create-only, by the first node that stood for the lease."""

    issuer: str = Field(description="the fleet's account key (A...)")
    xkey: str = Field(description="the fleet's curve key (X...): the sender of every sealed copy")
    created_by: str = Field(description="node id")
    created_at: datetime


class FleetKeysCopy(Strict):
    """The value of ``node.<node id>`` in NEX_FLEET: the fleet's seeds, sealed to that node's xkey by
    the fleet's xkey (nex.security.xkeys; the sealed JSON is ``{"issuer_seed", "xkey_seed"}``)."""

    recipient: str = Field(description="the node's xkey (X...) the copy is sealed to")
    sealed: str = Field(description="base64 of the xkv1 box")


__all__ = [
    "AppRecord", "AppSpec", "AppStatus", "AppWorkload", "Duration", "FleetKeysCopy", "FleetKeysRecord", "Placement",
    "ReconcilerLease",
    "RestartPolicy", "RestartPolicyKind", "RolloutState", "UpdateStrategy", "WorkloadRollout",
    "parse_duration",
]
