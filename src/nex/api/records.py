"""The node registry's records: what each node writes under its key in NEX_NODES, and what the
reconciler, the client and ``nex app status`` read there (docs/operations.md). Pure models."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from nex.api.models import (
    MAX_REASON_CHARS, AppRef, Health, Lifecycle, NodePing, Resources, Strict, WorkloadState, WorkloadType,
)


class ReplicaRecord(Strict):
    """One workload as the node registry lists it: small, so a node with many stays small."""

    id: str
    name: str
    namespace: str
    type: WorkloadType
    lifecycle: Lifecycle
    state: WorkloadState
    health: Health | None = None
    app: AppRef | None = None
    started_at: datetime
    exit_code: int | None = None
    reason: str | None = Field(default=None, max_length=MAX_REASON_CHARS,
                               description="why it failed or is unhealthy: how it ended, or its last failed check")


class NodeRecord(Strict):
    """A node's entry in the NEX_NODES bucket (key ``<node id>``), rewritten every registry
    interval and on each change. It lists the node's app replicas, what the reconciler needs;
    ``node.workload_count`` counts all its workloads. When the replicas do not fit in one
    value, the rest are in ``parts - 1`` more keys (:class:`NodeRecordPart`, nex.api.paging)."""

    node: NodePing
    resources: Resources
    runtimes: list[WorkloadType]
    workloads: list[ReplicaRecord] = Field(description="the node's app replicas (those of the first part)")
    seq: int = Field(ge=0, description="grows with every write of this node process")
    parts: int | None = Field(default=None, ge=2, description="absent: one key holds every replica; else the "
                              "replicas continue in the keys <node id>.1 to <node id>.<parts - 1>")


class NodeRecordPart(Strict):
    """More app replicas of a node whose record did not fit in one value: key ``<node id>.<part>``,
    written just before the :class:`NodeRecord` of the same ``seq``."""

    node_id: str
    seq: int = Field(ge=0, description="the seq of the NodeRecord this part belongs with")
    part: int = Field(ge=1)
    workloads: list[ReplicaRecord]
