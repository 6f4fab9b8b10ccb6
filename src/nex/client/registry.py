"""The node registry (NEX_NODES) as read for placement, by the client and the reconciler alike.

Each node writes its :class:`NodeRecord` under its id; a record too large for one value is
split into parts (``<node id>.<part>``, nex.api.paging) that a read puts back together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import nats.js.errors
from nats.js.client import JetStreamContext

from nex.api import subjects
from nex.api.records import NodeRecord
from nex.api.paging import assemble
from nex.kvwatch import latest_values

log = logging.getLogger(__name__)

_TORN_READS = 3  # reads of NEX_NODES while one of them catches a split record between its writes


@dataclass(frozen=True)
class RegistryRead:
    """One read of NEX_NODES."""

    records: list[NodeRecord]
    behind_s: dict[str, float]  # node id → seconds between its last write and the read's newest


async def read_registry(js: JetStreamContext, timeout: float) -> RegistryRead:
    """The node records, and how long before the read's newest write each node last wrote
    its key (JetStream's times, so no two clocks are compared); empty when no node has
    registered yet."""
    prefix = f"$KV.{subjects.NODES_BUCKET}."
    for _ in range(_TORN_READS):
        try:
            values = await latest_values(js, subjects.NODES_BUCKET, ">", timeout)
        except nats.js.errors.NotFoundError:
            return RegistryRead([], {})  # no bucket yet
        found = assemble((subject.removeprefix(prefix), data) for subject, data, _ in values)
        if not found.torn:
            break  # else a read fell between the writes of a split record: it is over at once
    for key in found.invalid:
        log.warning("key %s of %s is not a valid node record", key, subjects.NODES_BUCKET)
    written = {subject.removeprefix(prefix): at for subject, _, at in values}
    newest = max(written.values(), default=0.0)
    behind = {r.node.node_id: newest - written[r.node.node_id] for r in found.records
              if r.node.node_id in written}
    return RegistryRead(found.records, behind)
