"""Running the image tools (skopeo, umoci) as bounded child processes: in time, and in the
disk what they write may take."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import shutil
import time
from pathlib import Path

from nex.api.errors import BadRequest
from nex.images.sanitize import tree_bytes

MEASURE_EVERY_S = 0.01


class TooLarge(Exception):
    """What a tool wrote passed its limit (the tool was killed), or the result did."""

    def __init__(self, size: int) -> None:
        super().__init__(f"at least {size} bytes")
        self.size = size


async def run_tool(tool: str, *args: str, timeout: float,
                   max_file_bytes: int | None = None) -> tuple[int, bytes, bytes]:
    """(exit code, stdout, stderr) of ``tool args``; killed on time-out or cancellation.

    ``max_file_bytes``: no file the tool writes may grow larger (RLIMIT_FSIZE; a write
    past it fails with EFBIG). Raises asyncio.TimeoutError after ``timeout`` seconds,
    BadRequest when the tool is not installed.
    """
    exe = shutil.which(tool)
    if exe is None:
        raise BadRequest(f"OCI images need {tool}, which is not installed on this host")
    process = await asyncio.create_subprocess_exec(
        exe, *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    if max_file_bytes is not None:
        # Set from outside, right after the spawn (a preexec hook would fork the whole node):
        # the tool reads its input for far longer than this takes before it writes. A tool that
        # is already gone (a zombie until waited for, so its pid is not reused) wrote what it wrote.
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode, out, err


async def run_tool_within(tree: Path, limit: int, tool: str, *args: str,
                          timeout: float) -> tuple[int, bytes, bytes]:
    """:func:`run_tool`, killed as soon as the files under ``tree`` take more than ``limit`` bytes
    (by at most what it writes between two measures), and no single file may pass ``limit``.

    Raises TooLarge past the limit, as :func:`run_tool` otherwise.
    """
    run = asyncio.create_task(run_tool(tool, *args, timeout=timeout, max_file_bytes=max(limit, 0) + 1))
    watch = asyncio.create_task(_watch(tree, limit))
    try:
        await asyncio.wait({run, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (run, watch):
            task.cancel()  # run_tool kills the tool when cancelled
        await asyncio.gather(run, watch, return_exceptions=True)
    if watch.done() and not watch.cancelled():
        raise TooLarge(watch.result())  # or what made measuring fail
    code, out, err = run.result()
    if code != 0 and b"file too large" in err:  # one file passed the limit (EFBIG)
        raise TooLarge(limit + 1)
    return code, out, err


async def _watch(tree: Path, limit: int) -> int:
    """Returns the size of the tree once it passes ``limit``; runs until cancelled otherwise."""
    while True:
        started = time.monotonic()
        size = await asyncio.to_thread(tree_bytes, str(tree))
        if size > limit:
            return size
        # A tree of many files takes a while to walk: walk at most a fifth of the time.
        await asyncio.sleep(max(MEASURE_EVERY_S, 4 * (time.monotonic() - started)))


def last_line(stderr: bytes) -> str:
    """The message of a Go tool's last log line (``level=fatal msg="..."``)."""
    lines = stderr.decode(errors="replace").strip().splitlines()
    text = lines[-1] if lines else "failed"
    if 'msg="' in text:
        text = text.split('msg="', 1)[1].rstrip('"').replace('\\"', '"')
    return text
