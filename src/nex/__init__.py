"""Nex, the NATS Execution Engine.

``nex.connect(...)`` is the front door of the Python API (:func:`nex.client.connect`)::

    import nex

    async with nex.connect(namespace="default") as client:
        print(await client.ping())

It is imported on first use, so that a node's agents, which import ``nex`` too, do not load
the client.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
API_VERSION = "v1"

__all__ = ["API_VERSION", "NexClient", "NexError", "__version__", "connect"]

_LAZY = {"connect": "nex.client", "NexClient": "nex.client", "NexError": "nex.api.errors"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nex' has no attribute {name!r}")
