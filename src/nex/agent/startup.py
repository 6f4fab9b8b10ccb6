"""What an agent process settles before it imports anything heavy: run first by each agent's
``python -m`` entry (nex.agent.js, nex.agent.wasm).

A node starts an agent when its first function of that kind is deployed (or at start:
NodeConfig.warm_agents), and on a fleet's first deploys every node starts one at once,
so the agent's start is paid on the placement's path.
"""

from __future__ import annotations

import json
import os
import sys

from nex.agent.protocol import ENV_CONNECT

WEBSOCKET_SCHEMES = ("ws://", "wss://")


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
