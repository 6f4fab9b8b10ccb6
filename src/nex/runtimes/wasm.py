"""WebAssembly functions (WASI preview 1 commands), run by one agent process per node.

The agent (:mod:`nex.agent.wasm`) compiles each module once, keeping it compiled
under ``<state dir>/wasm-modules`` by sha256, and runs every call in a fresh
wasmtime instance (:mod:`nex.agent.wasm.wasmtime_engine` holds the contract with the
module). Everything else is :class:`nex.runtimes.function_agent.AgentRuntime`'s.

``prepare()`` checks the module's header; compiling it, and checking that it is a
WASI command (it exports ``_start``), happens in the agent at ``start()``, which
raises :class:`BadArtifact` with wasmtime's message.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from nex.agent.protocol import ENV_CACHE_DIR
from nex.api.errors import BadArtifact
from nex.api.models import WorkloadType
from nex.artifacts import sha256_file
from nex.runtimes.base import WorkloadSpec
from nex.runtimes.function_agent import AgentRuntime

CACHE_DIR_NAME = "wasm-modules"
_CORE_MODULE_HEADER = b"\0asm\x01\x00\x00\x00"


class WasmRuntime(AgentRuntime):
    """Runs ``WorkloadType.WASM`` functions in wasmtime."""

    type = WorkloadType.WASM
    engine_name = "wasm"
    agent_module = "nex.agent.wasm"

    @property
    def cache_dir(self) -> Path:
        return self.context.state_dir / CACHE_DIR_NAME

    async def prepare(self, spec: WorkloadSpec) -> list[str]:
        await asyncio.to_thread(_check_header, spec)
        return []

    def _agent_environment(self) -> dict[str, str]:
        return {ENV_CACHE_DIR: str(self.cache_dir)}

    async def _artifact_fields(self, spec: WorkloadSpec) -> dict[str, str]:
        _check_header(spec)
        sha256 = await asyncio.to_thread(sha256_file, spec.artifact_path)
        return {"artifact_path": str(spec.artifact_path), "artifact_sha256": sha256}


def _check_header(spec: WorkloadSpec) -> None:
    try:
        with spec.artifact_path.open("rb") as f:
            header = f.read(len(_CORE_MODULE_HEADER))
    except OSError as exc:
        raise BadArtifact(f"cannot read the module {spec.artifact_path}: {exc.strerror}") from None
    if header == _CORE_MODULE_HEADER:
        return
    if header[:4] == b"\0asm":
        raise BadArtifact("the file is a WebAssembly component, not a core module: build a WASI preview 1"
                          " command (wasm32-wasip1, wasm32-wasi)")
    raise BadArtifact("the file is not a WebAssembly module (it does not start with \\0asm)")
