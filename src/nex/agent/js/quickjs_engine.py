"""One function in one QuickJS context.

A ``quickjs.Context`` must only ever be called from the thread that created it, so
a :class:`QuickJsSandbox` is thread-confined: build it, call it and close it on one thread
(see :mod:`nex.agent.worker`). Its calls release the GIL while JavaScript runs.

Limits come from the binding: ``set_time_limit`` counts CPU time with ``clock()``,
which is the whole process's CPU time. A call therefore times out early, never late,
when other functions of the same agent burn CPU at the same time.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import quickjs

from nex.agent import protocol
from nex.agent.engine import ERROR, OUT_OF_MEMORY, TIMEOUT, CompileError, Outcome
from nex.agent.hostservices import FunctionHost, HostServices
from nex.agent.js import host as host_js
from nex.agent.js.prelude import PRELUDE, TEXT_CODECS
from nex.api.errors import FunctionError

# JavaScript stack per context; the thread that runs it must be larger (see nex.agent.worker).
JS_STACK_BYTES = 256 * 1024

_DESCRIBE_HEADROOM_BYTES = 1024 * 1024
_STREAMS = ("stdout", "stderr")
_LINE = re.compile(r"<input>:(\d+)")
_ANONYMOUS_FUNCTION = re.compile(r"^\s*(async\s+)?function\s*\*?\s*\(")


@dataclass(frozen=True)
class FunctionConfig:
    source: str
    timeout_ms: int
    memory_bytes: int
    env: dict[str, str] = field(default_factory=dict)


class QuickJsEngine:
    """The :class:`nex.agent.engine.Engine` of the JavaScript agent: one QuickJS context per function."""

    name = "javascript"
    parallel_calls = False  # a QuickJS context is bound to its thread and keeps state between calls

    def __init__(self, host_services: HostServices | None = None) -> None:
        # None: functions get no `nex` global.
        self._host_services = host_services

    def build(self, load: protocol.Load) -> QuickJsSandbox:
        host = self._host_services.scope(load) if self._host_services is not None else None
        return QuickJsSandbox(FunctionConfig(source=load.source, timeout_ms=load.timeout_ms,
                                      memory_bytes=load.memory_bytes, env=dict(load.env)), host)

    def close(self) -> None:
        pass


class QuickJsSandbox:
    """A compiled function, ready to be called with (subject, payload): the
    :class:`nex.agent.engine.Sandbox` of a QuickJS context."""

    def __init__(self, config: FunctionConfig, host: FunctionHost | None = None) -> None:
        self.config = config
        self._host = host
        self._context: quickjs.Context | None = None
        self._invoke: quickjs.Object | None = None
        self._settle: quickjs.Object | None = None
        self._take_logs: quickjs.Object | None = None
        self._caught: quickjs.Object | None = None
        self._host_take: quickjs.Object | None = None
        self._host_give: quickjs.Object | None = None
        self._startup_logs = self._build()

    def startup_logs(self) -> list[tuple[str, str]]:
        """Console lines the script wrote while it was evaluated."""
        logs, self._startup_logs = self._startup_logs, []
        return logs

    def invoke(self, subject: str, payload: bytes) -> Outcome:
        started = time.perf_counter()
        logs: list[tuple[str, str]] = []
        if self._host is not None:
            self._host.begin()
        try:
            data = self._call(subject, payload, logs)
            error = None
        except _Failed as failed:
            data, error = b"", failed.error
        except quickjs.JSException as exc:
            data, error = b"", self._failure(str(exc).split("\n", 1)[0])
            if error.kind == TIMEOUT:
                logs += self._logs_after_interrupt()
        except UnicodeError:
            data, error = b"", FunctionError("the function returned a string that is not valid Unicode")
        if error is not None and error.kind in (TIMEOUT, OUT_OF_MEMORY):
            # A context cut off mid-call may be full or half-updated: the next call gets a fresh one.
            self.close()
        return Outcome(data, error, round((time.perf_counter() - started) * 1000, 3), logs)

    def memory_used(self) -> int:
        return self._context.memory()["memory_used_size"] if self._context is not None else 0

    def close(self) -> None:
        """Free the context; on this thread, like every other call."""
        self._invoke = self._settle = self._take_logs = self._caught = None
        self._host_take = self._host_give = None
        self._context = None

    def _call(self, subject: str, payload: bytes, logs: list[tuple[str, str]]) -> bytes:
        if 3 * len(payload) > self.config.memory_bytes:
            raise _Failed(self._out_of_memory(f"a payload of {len(payload)} bytes does not fit"))
        if self._invoke is None:
            try:
                logs += self._build()
            except CompileError as exc:
                raise _Failed(FunctionError(f"could not re-create the function: {exc}")) from None
        assert self._invoke is not None and self._settle is not None
        text = payload.decode("latin-1")
        if "\0" in text:
            text = text.replace("\0", "\u0100")
        encoded = self._text(self._invoke(subject, text))
        encoded = _split_logs(encoded, logs)
        if encoded == "p":
            encoded = self._settled(logs)
        if encoded == "x":
            encoded = self._describe_caught(logs)
        return self._decode(encoded)

    def _describe_caught(self, logs: list[tuple[str, str]]) -> str:
        assert self._context is not None and self._caught is not None
        # The heap may be full (that may be why it threw): describe the error with some room.
        self._context.set_memory_limit(self.config.memory_bytes + _DESCRIBE_HEADROOM_BYTES)
        try:
            return _split_logs(self._text(self._caught()), logs)
        finally:
            self._context.set_memory_limit(self.config.memory_bytes)

    def _settled(self, logs: list[tuple[str, str]]) -> str:
        assert self._context is not None and self._settle is not None
        deadline = time.perf_counter() + self.config.timeout_ms / 1000
        while True:
            while self._context.execute_pending_job():
                if time.perf_counter() > deadline:
                    raise _Failed(self._failure("InternalError: interrupted"))
            encoded = _split_logs(self._text(self._settle()), logs)
            if encoded != "q":
                break
            self._serve_host_calls()  # their answers queue more jobs
        if encoded == "x":
            encoded = self._describe_caught(logs)
        if encoded == "p":
            raise _Failed(FunctionError("the function's promise never settled (there are no timers or I/O)"))
        return encoded

    def _serve_host_calls(self) -> None:
        """Perform the host calls the function queued (nex.agent.js.host), on this thread, in order."""
        assert self._host is not None and self._host_take is not None and self._host_give is not None
        for call_id, op, args in json.loads(self._text(self._host_take()) or "[]"):
            self._host_give(call_id, host_js.perform(self._host, op, args))

    def _text(self, result: object) -> str:
        # The prelude always returns a string; the binding gives None when it cannot read it.
        if not isinstance(result, str):
            raise _Failed(self._out_of_memory("out of memory"))
        return result

    def _decode(self, encoded: str) -> bytes:
        tag, data = encoded[:1], encoded[1:]
        if tag == "s":
            return data.encode()
        if tag == "b":
            return data.encode("latin-1")
        if tag == "S":
            return json.loads(data).encode()
        if tag == "B":
            return json.loads(data).encode("latin-1")
        if tag == "e":
            message, _, stack = data.partition("\n")
            # The top frame only; QuickJS leaves out the line when it is the function's first.
            line = _LINE.search(stack.partition("\n")[0])
            raise _Failed(self._failure(f"{message} (line {line.group(1)})" if line else message))
        raise AssertionError(f"unknown result tag {tag!r}")

    def _failure(self, message: str) -> FunctionError:
        if message.startswith("InternalError: interrupted"):
            return FunctionError(f"timed out: ran longer than {self.config.timeout_ms} ms", TIMEOUT)
        if self._ran_out_of_memory(message, self._context):
            return self._out_of_memory("out of memory")
        return FunctionError(message, ERROR)

    def _ran_out_of_memory(self, message: str, context: quickjs.Context | None) -> bool:
        # The binding cannot read the error's text when the heap is full.
        if message.startswith(("InternalError: out of memory", "(Failed obtaining QuickJS error string")):
            return True
        # Running out of memory while throwing leaves null as the thrown value. The heap
        # need not be nearly full: a Map that doubles its table fails with a quarter free.
        return (message == "null" and context is not None
                and context.memory()["memory_used_size"] > self.config.memory_bytes / 4)

    def _out_of_memory(self, what: str) -> FunctionError:
        return FunctionError(f"{what}: the limit is {self.config.memory_bytes} bytes", OUT_OF_MEMORY)

    def _logs_after_interrupt(self) -> list[tuple[str, str]]:
        if self._take_logs is None:
            return []
        try:
            return _pairs(json.loads(self._take_logs()))
        except quickjs.JSException:
            return []

    def _build(self) -> list[tuple[str, str]]:
        config = self.config
        if "\0" in config.source:
            raise CompileError("the script contains a NUL character")
        context = quickjs.Context()
        context.set_memory_limit(config.memory_bytes)
        context.set_time_limit(config.timeout_ms / 1000)
        context.set_max_stack_size(JS_STACK_BYTES)
        try:
            lookup = context.eval(PRELUDE)(json.dumps(config.env), host_js.HOST_JS if self._host else "", TEXT_CODECS)
            fn = _evaluate(context, config.source)
        except quickjs.JSException as exc:
            raise CompileError(self._compile_message(str(exc), context)) from None
        try:
            invoke = lookup("bind")(fn)
        except quickjs.JSException as exc:
            message = str(exc).split("\n", 1)[0].removeprefix("TypeError: ")
            if fn is None:
                message = ("the script must evaluate to a function (subject, payload), not to undefined"
                           " (a function declaration evaluates to nothing: end the script with the function's name)")
            raise CompileError(message) from None
        self._context, self._invoke = context, invoke
        self._settle, self._take_logs, self._caught = lookup("settle"), lookup("logs"), lookup("caught")
        self._host_take, self._host_give = lookup("hostTake"), lookup("hostGive")
        return _pairs(json.loads(self._take_logs()))

    def _compile_message(self, text: str, context: quickjs.Context) -> str:
        first, _, rest = text.partition("\n")
        if first.startswith("InternalError: interrupted"):
            return f"the script did not finish evaluating within {self.config.timeout_ms} ms"
        if self._ran_out_of_memory(first, context):
            return f"the script ran out of memory while evaluating: the limit is {self.config.memory_bytes} bytes"
        line = _LINE.search(rest)
        return f"{first} at line {line.group(1)}" if line else first


class _Failed(Exception):
    def __init__(self, error: FunctionError) -> None:
        super().__init__(error.message)
        self.error = error


def _evaluate(context: quickjs.Context, source: str) -> Any:
    try:
        return context.eval(source)
    except quickjs.JSException as exc:
        # `function (subject, payload) {...}` alone is a statement without a name, a SyntaxError.
        if not (str(exc).startswith("SyntaxError") and _ANONYMOUS_FUNCTION.match(source)):
            raise
    try:
        return context.eval(f"({source}\n)")
    except quickjs.JSException:
        pass
    return context.eval(source)  # raises the original error


def _split_logs(encoded: str, logs: list[tuple[str, str]]) -> str:
    if encoded[:1] != "L":
        return encoded
    end = encoded.index("\n")
    logs += _pairs(json.loads(encoded[1:end]))
    return encoded[end + 1:]


def _pairs(flat: list[Any]) -> list[tuple[str, str]]:
    return [(_STREAMS[flat[i]], flat[i + 1]) for i in range(0, len(flat), 2)]
