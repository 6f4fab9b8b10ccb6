"""WebAssembly functions (WASI preview 1 commands, WASI 0.2 components), run by one agent process per node.

The agent (:mod:`nex.agent.wasm`) compiles each module or component once, keeping it
compiled under ``<state dir>/wasm-modules`` by sha256, and runs every call of a command
module in a fresh wasmtime instance (:mod:`nex.agent.wasm.wasmtime_engine` holds the contract
with the module), a component's in its kept instance (:mod:`nex.agent.wasm.components`). Everything else is :class:`nex.runtimes.function_agent.AgentRuntime`'s.

``prepare()`` checks the header (a core module or a component); compiling it, and
checking that it is a WASI command (it exports ``_start``) or a component of the world
``nex:function`` (it exports ``handle``), happens in the agent at ``start()``, which
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
_COMPONENT_HEADER = b"\0asm\x0d\x00\x01\x00"  # version 13 of the component binary format, layer 1


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
    if header in (_CORE_MODULE_HEADER, _COMPONENT_HEADER):
        return
    if header[:4] == b"\0asm":
        raise BadArtifact(f"the file is a WebAssembly binary of a version this node cannot run ({header[4:].hex()}):"
                          " build a WASI preview 1 command (wasm32-wasip1) or a WASI 0.2 component (wasm32-wasip2)")
    raise BadArtifact("the file is not a WebAssembly module (it does not start with \\0asm)")
