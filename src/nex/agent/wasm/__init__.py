"""The WebAssembly engine of the agent: ``python -m nex.agent.wasm`` (:mod:`nex.agent.wasm.__main__`).

``wasmtime_engine`` (wasmtime instances of WASI commands), ``module_cache`` (their
compiled modules on disk), ``limits`` (what a store may grow to) and ``host`` (the
``nex`` imports: the host services in Wasm). Nothing here is imported by the node.
"""
