"""Small helpers the tests share: raw control requests, bounded waits."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from nex.api import subjects
from nex.api.errors import error_code


def file_artifact(path: Path) -> dict[str, str]:
    return {"uri": f"file://{path}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


async def control(nc, verb: str, target: str | None = None, body: Any = None,
                  namespace: str = "default", timeout: float = 5.0):
    """A raw control request as any NATS client would send it: (code or None, decoded body)."""
    payload = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
    msg = await nc.request(subjects.control(namespace, verb, target), payload, timeout=timeout)
    return error_code(msg.headers), json.loads(msg.data)


async def eventually(check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02):
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
