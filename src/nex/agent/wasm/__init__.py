"""The WebAssembly engine of the agent: ``python -m nex.agent.wasm`` (:mod:`nex.agent.wasm.__main__`).

``wasmtime_engine`` (wasmtime instances of WASI commands; it hands a component, told by its
header, to ``components``: kept instances of WASI 0.2 components of the world ``nex:function``),
``module_cache`` (their compiled forms on disk, authenticated), ``limits`` (what a store may
grow to), ``epoch`` (the ticker of the time limit), ``output`` (what they write, as log lines),
``host`` (the ``nex`` imports: the host services of command modules), ``component_host`` (the
``nex:host`` interfaces: the host services of components) and ``component_values`` (repairs to
how wasmtime-py passes values to a component). Nothing here is imported by the node.
"""
