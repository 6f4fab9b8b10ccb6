"""What an agent process settles before it imports anything heavy: run first by each agent's
``python -m`` entry (nex.agent.js, nex.agent.wasm).

A node starts an agent when its first function of that kind is deployed (or at start:
NodeConfig.warm_agents), and on a fleet's first deploys every node starts one at once,
so the agent's start is paid on the placement's path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys

from nex.agent.protocol import ENV_CONNECT

WEBSOCKET_SCHEMES = ("ws://", "wss://")
# glibc's mallopt() parameters, and what the agent sets them to (keep_reads_off_mmap)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 1024 * 1024
TRIM_THRESHOLD_BYTES = 8 * 1024 * 1024


def leave_out_websockets() -> None:
    """Keep aiohttp out of an agent that reaches NATS over TCP or TLS.

    nats-py imports aiohttp, its websocket transport, whenever it is installed (the node
    has it for its metrics and dashboard): about a third of an agent's start, and memory
    for nothing. An agent given a ws:// or wss:// server keeps it."""
    try:
        servers = json.loads(os.environ.get(ENV_CONNECT, "{}")).get("servers") or []
    except (ValueError, AttributeError):
        return  # the agent reports a bad connect setting itself
    if any(str(server).startswith(WEBSOCKET_SCHEMES) for server in servers):
        return
    sys.modules.setdefault("aiohttp", None)  # `import aiohttp` now raises ImportError, which nats-py expects


def keep_reads_off_mmap() -> bool:
    """Serve the event loop's 256 KiB socket reads from the heap, not from a fresh mapping each.

    asyncio reads a socket into a new 256 KiB buffer (``max_size`` of its transports) and shrinks
    it to what came. That is over glibc's default mmap threshold (128 KiB), which this pattern never
    raises, so every message the agent received cost an ``mmap``, an ``mremap`` and a ``munmap``:
    three system calls, about 30 µs of a call's path on a virtual machine (docs/performance.md).
    Fixed thresholds keep such buffers in the heap. Costs up to TRIM_THRESHOLD_BYTES of free
    heap kept instead of given back. False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
