"""JavaScript functions, run by one agent process per node (see :mod:`nex.agent.js`).

Everything but the script is :class:`nex.runtimes.function_agent.AgentRuntime`'s:
the agent, its restarts, loading and unloading, stats. ``prepare()`` reads the
script; compiling it happens in the agent, at ``start()``, which raises
:class:`BadArtifact` with the engine's message.

Why an agent dies: a bug of the agent or of the engine, or a kill. The QuickJS of
the archived ``quickjs`` package (2021-03-27) crashed it when functions ran out of
memory and when JSON.stringify met a value nested thousands of levels deep; the
QuickJS-ng of ``quickjs-ng`` throws a catchable error in both (see
docs/architecture.md). The agent is then restarted and every function loaded again.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path

from nex.api.errors import BadArtifact
from nex.api.models import WorkloadType
from nex.runtimes.base import RuntimeContext, WorkloadSpec
from nex.runtimes.function_agent import AgentRuntime


class JavaScriptRuntime(AgentRuntime):
    """Runs ``WorkloadType.JAVASCRIPT`` functions in QuickJS."""

    type = WorkloadType.JAVASCRIPT
    engine_name = "javascript"
    agent_module = "nex.agent.js"

    def __init__(self, context: RuntimeContext) -> None:
        super().__init__(context)
        self._scripts = ScriptCache(SCRIPT_CACHE_BYTES)

    async def prepare(self, spec: WorkloadSpec) -> list[str]:
        await self._script(spec)
        return []

    async def _artifact_fields(self, spec: WorkloadSpec) -> dict[str, str]:
        return {"source": await self._script(spec)}

    async def _script(self, spec: WorkloadSpec) -> str:
        source = self._scripts.get(spec.artifact_path)
        if source is None:
            source = await asyncio.to_thread(_read_script, spec)
            self._scripts.put(spec.artifact_path, source)
        return source


# Scripts kept decoded: a node deploying many copies of one function reads it once.
SCRIPT_CACHE_BYTES = 32 * 1024 * 1024


class ScriptCache:
    """Decoded scripts by artifact path, the least recently used dropped past ``max_bytes``.

    Artifact paths name a file of the node's artifact cache, which is named by its sha256
    and never rewritten: a path always holds the same script.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._scripts: OrderedDict[Path, str] = OrderedDict()

    def get(self, path: Path) -> str | None:
        source = self._scripts.get(path)
        if source is not None:
            self._scripts.move_to_end(path)
        return source

    def put(self, path: Path, source: str) -> None:
        if len(source) > self._max_bytes or path in self._scripts:
            return
        self._scripts[path] = source
        self._bytes += len(source)
        while self._bytes > self._max_bytes:
            _, dropped = self._scripts.popitem(last=False)
            self._bytes -= len(dropped)


def _read_script(spec: WorkloadSpec) -> str:
    try:
        data = spec.artifact_path.read_bytes()
    except OSError as exc:
        raise BadArtifact(f"cannot read the script {spec.artifact_path}: {exc.strerror}") from None
    if not data.strip():
        raise BadArtifact("the script is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadArtifact(f"the script is not UTF-8 text (byte {exc.start})") from None
