"""How values cross between Python and a component: repairs to wasmtime-py 51, and a fast call of ``handle``.

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

And a ``list<u8>`` (a payload, a reply, a KV value) is converted byte by byte, each byte a
value of the C API built or read by Python: a 1 MB payload took 2.7 s each way. Here the
C API's array of values is written and read in place with strided slices. (wasmtime's C
API still makes a 32-byte value of each byte on its side, which no binding can avoid.)

:func:`install` puts those three repairs in place of the library's methods; everything else
is the library's. :class:`HandleCall` calls the export ``handle``, whose type the sandbox
checked once, without asking wasmtime for its type on every call as ``Func.__call__`` does
(two thirds of a small call's time in the library), and keeps the GIL in every C call but
the one into the component (``_held``).
"""

from __future__ import annotations

import ctypes
from typing import Any, Optional

from wasmtime import _ffi as ffi  # the library's own bindings: the repaired methods call what it calls
from wasmtime.component import _types
from wasmtime.component._enter import enter_wasm

_NONE_TYPE = type(None)
_VAL = ffi.wasmtime_component_val_t
_VAL_SIZE = ctypes.sizeof(_VAL)
_VALUE_AT = _VAL.of.offset  # a u8 is the first byte of the union
_KIND_U8 = bytes([ffi.WASMTIME_COMPONENT_U8.value])
assert _VAL.kind.offset == 0 and _VAL.kind.size == 1
_installed = False

# The same library, through ctypes.PyDLL: its calls keep the GIL. The library's own binding
# releases it around every call, however short; a call of handle made a dozen of them, and a
# thread that gives the GIL up must win it back from the event loop's thread each time (on a
# busy agent, most of a small call's time). Only the call into the component releases it here.
_held = ctypes.PyDLL(ffi.dll._name)


def _held_function(name: str, argtypes: list[Any]) -> Any:
    function = getattr(_held, name)
    function.restype = None
    function.argtypes = argtypes
    return function


_vallist_new_uninit = _held_function("wasmtime_component_vallist_new_uninit",
                                     [ctypes.POINTER(ffi.wasmtime_component_vallist_t), ctypes.c_size_t])
_byte_vec_new = _held_function("wasm_byte_vec_new", [ctypes.POINTER(ffi.wasm_byte_vec_t), ctypes.c_size_t,
                                                     ctypes.c_char_p])
_val_delete = _held_function("wasmtime_component_val_delete", [ctypes.POINTER(_VAL)])
_set_epoch_deadline = _held_function("wasmtime_context_set_epoch_deadline",
                                     [ctypes.POINTER(ffi.wasmtime_context_t), ctypes.c_uint64])
_list_to_c = _types.ListType.convert_to_c
_list_from_c = _types.ListType.convert_from_c


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


def _bytes_to_c(self: Any, store: Any, val: Any, ptr: Any) -> None:
    if not isinstance(self.element, _types.U8):
        return _list_to_c(self, store, val, ptr)
    if not isinstance(val, (bytes, bytearray)):
        raise TypeError("expected bytes value")
    _bytes_into(ptr.contents, val)


def _bytes_from_c(self: Any, c: Any) -> Any:
    if not isinstance(self.element, _types.U8):
        return _list_from_c(self, c)
    assert c.kind == ffi.WASMTIME_COMPONENT_LIST.value
    try:
        return _bytes_of(c)
    finally:
        ffi.wasmtime_component_vallist_delete(ctypes.byref(c.of.list))


def _values(address: int | None, count: int) -> memoryview:
    """The C API's array of ``count`` values at ``address``, as bytes, without a copy."""
    return memoryview((ctypes.c_char * (count * _VAL_SIZE)).from_address(address or 0)).cast("B")


def _bytes_into(value: Any, data: bytes) -> None:
    # Written in place into the C API's own array: a value is 32 bytes, so a copy of it
    # here would cost 32 bytes more per byte of payload while the call lasts.
    raw = ffi.wasmtime_component_vallist_t()
    _vallist_new_uninit(ctypes.byref(raw), len(data))
    if data:
        values = _values(ctypes.cast(raw.data, ctypes.c_void_p).value, len(data))
        values[0::_VAL_SIZE] = _KIND_U8 * len(data)  # the rest of each value is padding
        values[_VALUE_AT::_VAL_SIZE] = data
    value.kind = ffi.WASMTIME_COMPONENT_LIST
    value.of.list = raw


def _bytes_of(value: Any) -> bytes:
    size = value.of.list.size
    if not size:
        return b""
    return _values(ctypes.cast(value.of.list.data, ctypes.c_void_p).value, size)[_VALUE_AT::_VAL_SIZE].tobytes()


class HandleCall:
    """``handle: func(subject: string, payload: list<u8>) -> result<list<u8>, string>`` of one instance."""

    def __init__(self, func: Any) -> None:
        self._func = func._func  # the C API's handle of the export, which Func keeps as its only state

    def __call__(self, store: Any, subject: str, payload: bytes) -> bytes | str:
        """The ``ok`` bytes or the ``err`` text; raises wasmtime.WasmtimeError for a trap."""
        params = (_VAL * 2)()
        result = _VAL()  # zeroed: a bool until the call writes it, which frees as nothing
        params[0].kind = ffi.WASMTIME_COMPONENT_STRING
        encoded = subject.encode()
        _byte_vec_new(ctypes.byref(params[0].of.string), len(encoded), encoded)
        _bytes_into(params[1], payload)
        try:
            enter_wasm(lambda: ffi.wasmtime_component_func_call(ctypes.byref(self._func), store._context(), params,
                                                                2, ctypes.byref(result), 1))
            assert result.kind == ffi.WASMTIME_COMPONENT_RESULT.value
            inner = result.of.result.val.contents
            if result.of.result.is_ok:
                return _bytes_of(inner)
            return ffi.to_str(inner.of.string)
        finally:
            _val_delete(ctypes.byref(params[0]))
            _val_delete(ctypes.byref(params[1]))
            _val_delete(ctypes.byref(result))


def set_epoch_deadline(store: Any, ticks: int) -> None:
    """``Store.set_epoch_deadline``, keeping the GIL (see ``_held``)."""
    _set_epoch_deadline(store._context(), ticks)


def install() -> None:
    """Once per process, before any component is linked."""
    global _installed
    if not _installed:
        _types.VariantLikeType.add_classes = _add_classes  # type: ignore[method-assign]
        _types.VariantLikeType._lower = _lower  # type: ignore[method-assign]
        _types.ListType.convert_to_c = _bytes_to_c  # type: ignore[method-assign]
        _types.ListType.convert_from_c = _bytes_from_c  # type: ignore[method-assign]
        _installed = True
