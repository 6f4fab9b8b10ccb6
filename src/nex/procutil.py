"""Process and pipe helpers shared by everything that starts a child process."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nex.types import LogSink

_PR_SET_PDEATHSIG = 1
MAX_LINE = 64 * 1024  # a log line longer than this is cut into pieces
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the process that started it dies.

    This is what keeps a SIGKILLed node from leaving orphans; the next node start
    also sweeps what it recorded (see nex.node.supervisor).
    """
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def new_group_dying_with_parent() -> None:
    """preexec_fn for workloads: own process group, killed when the node dies."""
    os.setpgid(0, 0)
    die_with_parent()


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def group_alive(pgid: int) -> bool:
    return signal_group(pgid, 0)


async def pump_lines(stream: asyncio.StreamReader, emit: LogSink, name: str) -> None:
    """Forward a pipe line by line; a line longer than MAX_LINE is cut into pieces."""
    while True:
        try:
            line = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                emit(name, exc.partial)
            return
        except asyncio.LimitOverrunError as exc:
            line = await stream.readexactly(exc.consumed)
            emit(name, line)
            continue
        emit(name, line.rstrip(b"\n"))
