"""The WebAssembly agent: ``python -m nex.agent.wasm`` (see :mod:`nex.agent.agent`).

Besides the environment every agent gets, ``NEX_AGENT_CACHE_DIR`` names the
directory of its compiled modules (:mod:`nex.agent.wasm.module_cache`).
"""

from __future__ import annotations

import logging
import os
import sys

if __name__ == "__main__":  # the agent's process, not a module imported by the node
    from nex.agent.startup import leave_out_websockets

    leave_out_websockets()  # before anything imports nats

from nex.agent.agent import run  # noqa: E402
from nex.agent.wasm.wasmtime_engine import WASM_STACK_BYTES, WasmEngine  # noqa: E402

# wasmtime runs wasm on the calling thread's stack, up to WASM_STACK_BYTES, and
# needs room below it for its own and Python's frames.
THREAD_STACK_BYTES = 4 * WASM_STACK_BYTES


def main() -> int:
    code = run(WasmEngine.name, WasmEngine.from_environment, THREAD_STACK_BYTES)
    # wasmtime frees a call's WASI output streams on its own threads, through a
    # Python callback: one that races the interpreter's finalization aborts the
    # process. Everything is closed by now, so leave without finalizing.
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
