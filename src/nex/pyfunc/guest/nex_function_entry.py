"""The entry of a Python function's component (componentize-py's app module).

Built into every Python function beside the user's module, which is copied in as
``nex_user_function``: it adapts the user's ``handle(subject, payload)`` to the world
``nex:function``'s export. The return value becomes the reply's bytes (bytes as they are,
str as UTF-8, None as nothing, anything else as JSON); a raised exception becomes the
error reply, ``Type: message (line N)`` as for JavaScript.

This module runs when the component is built (componentize-py snapshots the interpreter
after importing it): what the user's module imports, at its top or inside its functions,
is imported here, because the finished component has no files to import from.
"""

import encodings.idna  # socket and http use it lazily: a connection attempt then fails as it should
import json

import wit_world
from componentize_py_types import Err

import nex_function_imports  # the modules the user's module imports anywhere (generated)
import nex_user_function

# Imported for what they leave loaded in the snapshot, not for a name: kept in the component.
_PRELOADED = (encodings.idna, nex_function_imports)
USER_FILE = nex_user_function.__file__
_handle = getattr(nex_user_function, "handle", None)
if not callable(_handle):
    raise TypeError("the module defines no function handle(subject, payload)")

OUT_OF_MEMORY = "out of memory"
_NO_HOST = ("a function sees no file, socket or process of the host: use the nex module's host services"
            " (nex.kv, nex.objects, nex.publish, nex.request, nex.http)")


def _line(error: BaseException) -> int | None:
    """The line of the user's module where the error was raised (its innermost frame there)."""
    line = None
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == USER_FILE:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def describe(error: BaseException) -> str:
    """``ValueError: too big: 500 (line 4)``: the error reply's message."""
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if isinstance(error, OSError) and not isinstance(error, (TimeoutError, InterruptedError)):
        text += f" ({_NO_HOST})"
    line = _line(error)
    return f"{text} (line {line})" if line is not None else text


def encode(result: object) -> bytes:
    """The reply's bytes, as JavaScript's return values are: bytes, text as UTF-8, None as
    nothing, anything else as its JSON."""
    if result is None:
        return b""
    if isinstance(result, (bytes, bytearray, memoryview)):
        return bytes(result)
    if isinstance(result, str):
        return result.encode("utf-8", "surrogatepass")
    try:
        return json.dumps(result, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"handle returned a {type(result).__name__}, which is not bytes, str or JSON: {exc}") from None


class WitWorld(wit_world.WitWorld):
    def handle(self, subject: str, payload: bytes) -> bytes:
        try:
            return encode(_handle(subject, payload))
        except BaseException as error:  # noqa: BLE001 (any raise, SystemExit too, is the call's error reply: an escaping one would trap)
            try:
                message = describe(error)
            except BaseException:  # noqa: BLE001 (a __str__ that raises must not trap the instance)
                message = type(error).__name__
            if isinstance(error, MemoryError):  # the engine's mark: reported out of memory, the instance replaced
                message = f"{OUT_OF_MEMORY}: {message}"
            raise Err(message) from None
