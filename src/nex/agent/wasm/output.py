"""What a Wasm function writes besides its reply: its output streams as log lines, and
wasmtime's errors as one line (:mod:`nex.agent.wasm.wasmtime_engine`, :mod:`nex.agent.wasm.components`)."""

from __future__ import annotations

MAX_LOG_LINES = 1000  # per call
MAX_LOG_LINE_BYTES = 64 * 1024


class LogLines:
    """Splits a stream into lines: one log message each, capped in number and length."""

    def __init__(self, stream: str) -> None:
        self._stream = stream
        self._lines: list[tuple[str, str]] = []
        self._partial = b""
        self._dropped = 0

    def write(self, chunk: bytes) -> None:
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        for line in complete:
            self._add(line)
        if len(self._partial) > MAX_LOG_LINE_BYTES:
            self._add(self._partial)
            self._partial = b""

    def lines(self) -> list[tuple[str, str]]:
        if self._partial:
            self._add(self._partial)
            self._partial = b""
        if self._dropped:
            self._lines.append((self._stream, f"nex: {self._dropped} log lines dropped"))
            self._dropped = 0
        return self._lines

    def _add(self, line: bytes) -> None:
        if len(self._lines) >= MAX_LOG_LINES:
            self._dropped += 1
            return
        self._lines.append((self._stream, line[:MAX_LOG_LINE_BYTES].decode(errors="replace")))


def one_line(exc: Exception) -> str:
    # wasmtime's errors read "what\n\nCaused by:\n    why"
    parts = [line.strip() for line in str(exc).splitlines() if line.strip() and line.strip() != "Caused by:"]
    return ": ".join(parts)
