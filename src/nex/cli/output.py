"""Rendering: JSON, rich tables, and the one line an error becomes."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

import click
import nats.errors
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from nex.api.errors import START_NODE_HINT, FunctionError, NexError
from nex.api.models import Usage, describe_validation_error

SHORT_ID = 12
_PIPED_WIDTH = 4096


def stdout() -> Console:
    # Made per call: click's test runner swaps sys.stdout between invocations.
    # Piped output keeps one row a line, so grep and awk see whole rows.
    piped = not sys.stdout.isatty()
    return Console(highlight=False, width=_PIPED_WIDTH if piped else None)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def to_jsonable(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return value
    return [item.model_dump(mode="json") for item in value]


def print_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    click.echo(json.dumps(to_jsonable(value), indent=2))


def print_json_line(value: BaseModel | dict[str, Any]) -> None:
    click.echo(json.dumps(to_jsonable(value)))


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        t.add_column(column, overflow="fold")
    for row in rows:
        t.add_row(*("" if cell is None else str(cell) for cell in row))
    stdout().print(t)


def fields(pairs: Iterable[tuple[str, Any]]) -> None:
    """A two-column key/value listing."""
    t = Table(box=None, pad_edge=False, show_header=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for key, value in pairs:
        t.add_row(key, "" if value is None else str(value))
    stdout().print(t)


def short(identifier: str) -> str:
    return identifier[:SHORT_ID]


def age(since: datetime) -> str:
    """'3m', '2h', '5d': how long ago ``since`` was."""
    if since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    return duration((datetime.now(timezone.utc) - since).total_seconds())


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def describe_error(exc: BaseException) -> str | None:
    """The one line an expected failure prints; None for a bug, which keeps its traceback."""
    if isinstance(exc, FunctionError):
        return f"function failed ({exc.kind}): {exc.message}"
    if isinstance(exc, NexError):
        return exc.message
    if isinstance(exc, ValidationError):
        return describe_validation_error(exc)
    if isinstance(exc, nats.errors.ConnectionClosedError):
        return "the connection to NATS was closed"
    if isinstance(exc, nats.errors.NoServersError):
        return "no NATS server answers any more"
    if isinstance(exc, nats.errors.Error):
        return str(exc) or type(exc).__name__
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    if isinstance(exc, ValueError):
        return str(exc)
    return None


def error_hint(exc: BaseException) -> str | None:
    """What to do about an expected failure, when there is something to say: the line under its message."""
    if isinstance(exc, NexError):
        return exc.hint
    if isinstance(exc, (nats.errors.ConnectionClosedError, nats.errors.NoServersError)):
        return START_NODE_HINT
    return None


def print_error(message: str, hint: str | None = None) -> None:
    """An expected failure as the CLI shows it: ``nex: error: <message>``, then the hint, if any."""
    click.echo(f"nex: error: {message}", err=True)
    if hint:
        click.echo(hint, err=True)


def usage_text(usage: Usage | None) -> str:
    """``1.25s CPU, 3.4 MiB, 2 pids``; ``-`` when nothing was read."""
    if usage is None:
        return "-"
    parts = []
    if usage.cpu_seconds is not None:
        parts.append(f"{usage.cpu_seconds:.2f}s CPU")
    if usage.memory_bytes is not None:
        parts.append(f"{usage.memory_bytes / (1 << 20):.1f} MiB")
    if usage.pids is not None:
        parts.append(f"{usage.pids} pids")
    return ", ".join(parts) or "-"
