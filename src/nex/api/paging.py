"""Replies and registry values that never pass the NATS server's max_payload. No I/O.

A message larger than ``max_payload`` is never delivered, so what lists workloads is cut
to size where it is made:

- INFO and WPING answer one *page* of the namespace's workloads, in the order of their
  ids: as many as fit (or ``limit``), with ``next`` (the last id of the page) when more
  follow. ``INFO.<node>`` with ``{"after": next}`` answers the next page of that node;
  that is also how a client goes on from a node's first WPING page, since ``WPING.<id>``
  names a workload.
- A node's registry record lists its app replicas; those that do not fit in one KV value
  go into more keys, ``<node id>.<part>``, which a reader puts back together
  (:func:`split_record`, :func:`assemble`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, TypeVar

from pydantic import BaseModel, ValidationError

from nex.api.models import CURSOR_MAX_LENGTH, WorkloadSummary
from nex.api.records import NodeRecord, NodeRecordPart

T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)

# Room left in every message: the server's limit counts headers too, and a margin costs a
# page nothing it would notice.
HEADROOM_BYTES = 1024
_PLACEHOLDER_CURSOR = "x" * CURSOR_MAX_LENGTH


def encoded(model: BaseModel) -> bytes:
    """A model as it goes on the wire."""
    return model.model_dump_json(exclude_none=True).encode()


def take(items: Iterator[T], size_of: Callable[[T], int], budget: int,
         limit: int | None = None) -> tuple[list[T], bool]:
    """The next items of ``items`` whose sizes (each plus one byte, for the comma of a JSON
    list) add up to at most ``budget``, at most ``limit`` of them and at least one; and whether
    any item is left. One item past the page is read, and kept back for the next call by
    the caller's iterator (see :class:`_Peekable`)."""
    peekable = items if isinstance(items, _Peekable) else _Peekable(items)
    page: list[T] = []
    used = 0
    while peekable.has_next():
        if limit is not None and len(page) >= limit:
            break
        size = size_of(peekable.peek()) + 1
        if page and used + size > budget:
            break
        page.append(peekable.pop())
        used += size
    return page, peekable.has_next()


class _Peekable(Iterator[T]):
    def __init__(self, items: Iterable[T]) -> None:
        self._items = iter(items)
        self._head: list[T] = []

    def has_next(self) -> bool:
        if not self._head:
            try:
                self._head.append(next(self._items))
            except StopIteration:
                return False
        return True

    def peek(self) -> T:
        self.has_next()
        return self._head[0]

    def pop(self) -> T:
        self.has_next()
        return self._head.pop()

    def __next__(self) -> T:
        if not self.has_next():
            raise StopIteration
        return self.pop()


def fill_page(reply: R, workloads: Iterable[WorkloadSummary], max_bytes: int, limit: int | None = None) -> R:
    """``reply`` (a NodeInfo or WorkloadPing, its ``workloads`` empty) with the first page of
    ``workloads`` (already in id order, after the cursor) that keeps it within ``max_bytes``,
    and ``next`` when more follow. ``workloads`` is read lazily: only one past the page."""
    frame = len(encoded(reply.model_copy(update={"next": _PLACEHOLDER_CURSOR})))
    page, more = take(iter(workloads), lambda w: len(encoded(w)), max_bytes - HEADROOM_BYTES - frame, limit)
    return reply.model_copy(update={"workloads": page, "next": page[-1].id if more and page else None})


# -- the registry record --------------------------------------------------------------


def part_key(node_id: str, part: int) -> str:
    """The NEX_NODES key of part ``part`` of a node's record."""
    return f"{node_id}.{part}"


def split_record(record: NodeRecord, max_bytes: int) -> tuple[NodeRecord, list[NodeRecordPart]]:
    """``record`` cut into values of at most ``max_bytes``: the record with the replicas that
    fit, and the parts that hold the rest (none when all fit, the usual case)."""
    if len(encoded(record)) <= max_bytes - HEADROOM_BYTES:
        return record, []
    replicas = _Peekable(record.workloads)
    size = lambda r: len(encoded(r))  # noqa: E731
    head = record.model_copy(update={"workloads": [], "parts": 1_000_000})
    first, more = take(replicas, size, max_bytes - HEADROOM_BYTES - len(encoded(head)))
    node_id = record.node.node_id
    parts: list[NodeRecordPart] = []
    while more:
        frame = NodeRecordPart(node_id=node_id, seq=record.seq, part=len(parts) + 1, workloads=[])
        page, more = take(replicas, size, max_bytes - HEADROOM_BYTES - len(encoded(frame)))
        parts.append(frame.model_copy(update={"workloads": page}))
    head = record.model_copy(update={"workloads": first, "parts": len(parts) + 1 if parts else None})
    return head, parts


class Assembled(NamedTuple):
    """The node records put back together, with the keys that did not parse and the nodes left out."""

    records: list[NodeRecord]
    invalid: list[str]  # keys whose value did not parse
    torn: list[str]  # node ids left out: their parts are missing or belong with another write


def assemble(values: Iterable[tuple[str, bytes]]) -> Assembled:
    """The node records of the NEX_NODES values ``(key, value)`` (later values of a key win),
    each with the replicas of its parts put back.

    A record whose parts are missing, or belong with another write (a read that fell between
    the write of the parts and that of the record), is left out: a node seen incompletely is
    treated like one not seen at all by this read, which the reconciler already tolerates
    (nex.fleet.liveness), rather than like one that lost replicas.
    """
    latest = dict(values)
    records: list[NodeRecord] = []
    parts: dict[tuple[str, int], NodeRecordPart] = {}
    invalid: list[str] = []
    for key, value in latest.items():
        try:
            if "." in key:
                part = NodeRecordPart.model_validate_json(value)
                parts[(part.node_id, part.part)] = part
            else:
                records.append(NodeRecord.model_validate_json(value))
        except ValidationError:
            invalid.append(key)
    whole, torn = [], []
    for record in records:
        if record.parts is None:
            whole.append(record)
            continue
        found = [parts.get((record.node.node_id, i)) for i in range(1, record.parts)]
        if any(p is None or p.seq != record.seq for p in found):
            torn.append(record.node.node_id)
            continue
        replicas = record.workloads + [r for p in found if p is not None for r in p.workloads]
        whole.append(record.model_copy(update={"workloads": replicas, "parts": None}))
    return Assembled(whole, invalid, torn)
