"""The JavaScript engine of the agent: ``python -m nex.agent.js`` (:mod:`nex.agent.js.__main__`).

``quickjs_engine`` (one QuickJS context per function), ``prelude`` (the JavaScript every
context runs first) and ``host`` (the ``nex`` global: the host services in JavaScript).
Nothing here is imported by the node.
"""
