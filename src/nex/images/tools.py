"""Running the image tools (skopeo, umoci) as bounded child processes."""

from __future__ import annotations

import asyncio
import resource
import shutil

from nex.api.errors import BadRequest


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
        # the tool reads its input for far longer than this takes before it writes.
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode, out, err


def last_line(stderr: bytes) -> str:
    """The message of a Go tool's last log line (``level=fatal msg="..."``)."""
    lines = stderr.decode(errors="replace").strip().splitlines()
    text = lines[-1] if lines else "failed"
    if 'msg="' in text:
        text = text.split('msg="', 1)[1].rstrip('"').replace('\\"', '"')
    return text
