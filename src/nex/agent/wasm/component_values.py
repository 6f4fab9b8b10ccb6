"""Two repairs to how wasmtime-py 51 lowers the results of host functions into a component.

``wasmtime.component`` picks the case of an untagged ``result`` or ``option`` that a Python
value belongs to by the classes each case accepts (``add_classes``), and two things go wrong:

- A case without a payload (``none`` of an option) accepts ``object``, so every value
  belongs to it: ``result<option<list<u8>>, host-error>`` (``kv.get``) can never be an
  ``err``, whose record is taken for an ``ok`` and then refused ("value not valid for this
  variant"), which traps the guest.
- The classes are gathered in one module-wide set, cleared and filled for every value.
  Gathering them calls into the C API, which releases the GIL: two functions that return
  from host calls at once, on two threads (``max_concurrency``), test their values against
  each other's classes.

:func:`install` replaces the two methods with ones that accept ``None`` alone for a case
without a payload and gather classes in a set of their own. Everything else is the library's.
"""

from __future__ import annotations

import ctypes
from typing import Any, Optional

from wasmtime import _ffi as ffi  # the library's own bindings: the repaired methods call what it calls
from wasmtime.component import _types

_NONE_TYPE = type(None)
_installed = False


def _add_classes(self: Any, classes: set[type]) -> None:
    if self._tagged():
        classes.add(_types.Variant)
        return
    for _, ty in self._cases():
        if ty is None:
            classes.add(_NONE_TYPE)
        else:
            ty.add_classes(classes)


def _lower(self: Any, store: Any, val: Any) -> tuple[str, Optional[Any]]:
    tagged = self._tagged()
    if tagged and not isinstance(val, _types.Variant):
        raise TypeError("expected Variant type")
    for name, ty in self._cases():
        if tagged:
            if name != val.tag:
                continue
        elif ty is None:
            if val is not None:
                continue
        else:
            classes: set[type] = set()
            ty.add_classes(classes)
            if not isinstance(val, tuple(classes)):
                continue
        if ty is None:
            return (name, None)
        raw = ffi.wasmtime_component_val_t()
        ty.convert_to_c(store, val.payload if tagged else val, ctypes.pointer(raw))
        return (name, ffi.wasmtime_component_val_new(ctypes.byref(raw)))
    raise ValueError("value not valid for this variant")


def install() -> None:
    """Once per process, before any component is linked."""
    global _installed
    if not _installed:
        _types.VariantLikeType.add_classes = _add_classes  # type: ignore[method-assign]
        _types.VariantLikeType._lower = _lower  # type: ignore[method-assign]
        _installed = True
