"""What a Wasm function's store may hold: ``memory_mib`` shared among its linear memory and tables.

wasmtime's store limiter (``Store.set_limits``) bounds each linear memory and each
table on its own, and counts the instances, tables and memories a store creates; it
cannot bound their sum. So the function's memory limit is split ahead of time:

- Tables get ``1 / TABLE_SHARE`` of it. A table element costs ``TABLE_ELEMENT_BYTES``
  (a ``funcref`` is a pointer; an ``externref`` takes 4), so each of at most
  ``MAX_TABLES`` tables may hold one element per KiB of the limit: 16,384 under
  16 MiB, and all eight tables together at most 1 MiB.
- Linear memory gets the rest: at most ``MAX_MEMORIES`` memory of
  ``memory_bytes - table_bytes``.
- At most ``MAX_INSTANCES`` instances. A command module is one; a component is several
  (componentize-py's need more than 4, two tables and over 5,600 elements, under 16 MiB).

So linear memory plus tables never pass ``memory_bytes``. The proposals whose objects
live in wasmtime's GC heap (GC, exceptions) are off in the engine (:mod:`nex.agent.wasm.wasmtime_engine`):
the limiter bounds that heap like one more memory, beside the linear one, so it would double
what a function may hold.
"""

from __future__ import annotations

from dataclasses import dataclass

TABLE_ELEMENT_BYTES = 8
TABLE_SHARE = 16
MAX_TABLES = 8
MAX_MEMORIES = 1
MAX_INSTANCES = 16


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """The arguments of ``wasmtime.Store.set_limits`` for one function."""

    memory_size: int  # bytes of linear memory
    table_elements: int  # per table
    instances: int = MAX_INSTANCES
    tables: int = MAX_TABLES
    memories: int = MAX_MEMORIES

    @classmethod
    def for_memory(cls, memory_bytes: int) -> StoreLimits:
        table_elements = memory_bytes // (TABLE_SHARE * MAX_TABLES * TABLE_ELEMENT_BYTES)
        table_bytes = MAX_TABLES * table_elements * TABLE_ELEMENT_BYTES
        return cls(memory_size=memory_bytes - table_bytes, table_elements=table_elements)

    @property
    def table_bytes(self) -> int:
        """The most all tables together may take."""
        return self.tables * self.table_elements * TABLE_ELEMENT_BYTES

    def describe(self) -> str:
        return (f"{self.memory_size} bytes of linear memory, {self.tables} tables of {self.table_elements}"
                f" elements, {self.instances} instances")
