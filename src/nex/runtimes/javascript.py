"""JavaScript functions, run by one agent process per node (see :mod:`nex.agent.javascript`).

Everything but the script is :class:`nex.runtimes.function_agent.AgentRuntime`'s:
the agent, its restarts, loading and unloading, stats. ``prepare()`` reads the
script; compiling it happens in the agent, at ``start()``, which raises
:class:`BadArtifact` with the engine's message.

Why an agent dies: beside bugs, the QuickJS of the ``quickjs`` package (2021-03-27)
has use-after-free bugs when a context runs out of memory (upstream
bellard/quickjs#533; fixed in quickjs-ng, PR #1472): some allocation patterns
crash the process after a few out-of-memory failures. Its JSON.stringify does not
check its recursion either: a value nested some thousands of levels deep
overflows the function thread's C stack. The agent is then restarted and every
function loaded again.
"""

from __future__ import annotations

import asyncio

from nex.api.errors import BadArtifact
from nex.api.models import WorkloadType
from nex.runtimes.base import WorkloadSpec
from nex.runtimes.function_agent import AgentRuntime


class JavaScriptRuntime(AgentRuntime):
    """Runs ``WorkloadType.JAVASCRIPT`` functions in QuickJS."""

    type = WorkloadType.JAVASCRIPT
    engine_name = "javascript"
    agent_module = "nex.agent.javascript"

    async def prepare(self, spec: WorkloadSpec) -> None:
        await asyncio.to_thread(_read_script, spec)

    async def _artifact_fields(self, spec: WorkloadSpec) -> dict[str, str]:
        return {"source": await asyncio.to_thread(_read_script, spec)}


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
