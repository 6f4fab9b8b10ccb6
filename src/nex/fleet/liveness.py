"""Which nodes the reconciler counts as alive: the registry's word, checked and slowed down.

A node's NEX_NODES key vanishes when the node stops writing it (the bucket's TTL),
and that is how the fleet learns a node is gone. But a read of the registry can
also come back short while JetStream moves a stream's leader (a nats-server of the
cluster stopping, say). Acting on such a read would replace healthy replicas, then
stop the originals as surplus when they show up again. So:

- a read that lacks the reconciler's own node, which is certainly alive and writing,
  is not a view of the fleet at all: the pass is skipped;
- a node missing from the registry is kept, as last seen, for one grace period;
  only a node still missing after it is gone;
- an auction waits for the bids of the nodes that still write their entry (its
  ``seq`` moved within the grace period), not for a dead node whose key has not
  expired yet.

Waiting for the key to expire costs the TTL (``node_timeout_s``) and the grace. A
node that died is known sooner: its key stops moving. A node whose last write is
more than :meth:`silent`'s threshold behind the newest write of the read (times
of the JetStream server, so no clocks are compared, and a freshly elected
reconciler needs no history) is asked, by the reconciler, on its own PING
subject. "No responders" means no connection of that node subscribes any more:
it is gone at once (:meth:`gone`), until it writes again. A node that does not
answer for another reason (busy, cut off) proves nothing and waits for its TTL.

No I/O here.
"""

from __future__ import annotations

from nex.api.records import NodeRecord


class Liveness:
    def __init__(self, own_node_id: str, grace_s: float) -> None:
        self._own = own_node_id
        self._grace_s = grace_s
        self._last: dict[str, NodeRecord] = {}
        self._missing_since: dict[str, float] = {}
        self._seq_moved: dict[str, tuple[int, float]] = {}  # node id → (seq, when it last changed)
        self._listed: set[str] = set()
        self._gone: dict[str, int] = {}  # node id → the seq of its last record, for nodes found gone

    def trustworthy(self, records: list[NodeRecord]) -> bool:
        """Whether a registry read can be acted on: it must list the reconciler's own node."""
        return any(r.node.node_id == self._own for r in records)

    def view(self, records: list[NodeRecord], now: float) -> list[NodeRecord]:
        """The nodes to plan with: those listed, plus those missing for less than the grace period."""
        present = {r.node.node_id: r for r in records}
        for node_id, seq in list(self._gone.items()):
            if node_id not in present:
                del self._gone[node_id]  # its key expired: gone the usual way from now on
            elif present[node_id].seq == seq:
                del present[node_id]  # its last record, still there until the TTL
            else:
                del self._gone[node_id]  # it wrote again: back
        self._listed = set(present)
        for node_id, record in present.items():
            seen = self._seq_moved.get(node_id)
            if seen is None or seen[0] != record.seq:
                self._seq_moved[node_id] = (record.seq, now)
        for node_id in list(self._last):
            if node_id in present:
                self._missing_since.pop(node_id, None)
                continue
            since = self._missing_since.setdefault(node_id, now)
            if now - since >= self._grace_s:
                del self._last[node_id]
                del self._missing_since[node_id]
                self._seq_moved.pop(node_id, None)
        self._last.update(present)
        return list(self._last.values())

    def silent(self, records: list[NodeRecord], behind_s: dict[str, float], after_s: float) -> list[NodeRecord]:
        """The listed nodes (this one aside, and those found gone) whose key was last written more
        than ``after_s`` before the newest write of the read: the ones to ask whether they are there."""
        return [r for r in records if r.node.node_id != self._own and r.node.node_id not in self._gone
                and behind_s.get(r.node.node_id, 0.0) > after_s]

    def gone(self, record: NodeRecord) -> None:
        """The node no longer listens (no responders to its PING): out of the view now, not after
        its TTL and the grace; back as soon as it writes a record of another seq."""
        node_id = record.node.node_id
        self._gone[node_id] = record.seq
        self._last.pop(node_id, None)
        self._missing_since.pop(node_id, None)
        self._seq_moved.pop(node_id, None)
        self._listed.discard(node_id)

    def writing(self, now: float, within_s: float) -> int:
        """How many nodes of the last read wrote their entry within ``within_s``: the bids to wait for."""
        return sum(1 for node_id in self._listed
                   if node_id in self._seq_moved and now - self._seq_moved[node_id][1] <= within_s)

    def forget(self) -> None:
        """A new term: what a previous one saw may be stale."""
        self._last.clear()
        self._missing_since.clear()
        self._seq_moved.clear()
        self._listed.clear()
        self._gone.clear()
