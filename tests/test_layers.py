"""The layers of nex, checked from the imports of its source (issue 16; docs/architecture.md).

Every import counts: at the top of a module, under ``if TYPE_CHECKING:``, inside a
function. A type hint that names a module above is a dependency on it all the same: it
ties the lower layer to the upper one's changes, and an import cycle hidden behind
TYPE_CHECKING becomes a real one the day someone needs the name at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# What each layer may import of nex (itself always); a module under none of them is unruled.
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    # the wire contract: pure, below everything
    "nex.api": (),
    # the vocabulary shared by the runtimes and the drivers below them, and the process helpers
    "nex.types": ("nex.api",),
    "nex.procutil": ("nex.types",),
    # the function agent: a process of its own, which talks to the node only over NATS
    # and its protocol; it knows nothing of the node's packages, nor of its keys
    "nex.agent": ("nex.api", "nex.connection", "nex.gctune", "nex.ratelimit"),
    # Python functions are built on the user's side, from the wire contract's errors alone;
    # its guest modules go into the component and import nothing of nex at all
    "nex.pyfunc": ("nex.api",),
    "nex.pyfunc.guest": (),
}

# What each layer must not import (prefixes).
MUST_NOT_IMPORT: dict[str, tuple[str, ...]] = {
    # the OCI driver and the node's keys sit below every runtime
    "nex.sandbox": ("nex.runtimes", "nex.node", "nex.agent", "nex.fleet", "nex.client", "nex.cli", "nex.ui"),
    "nex.security": ("nex.runtimes", "nex.node", "nex.agent", "nex.fleet", "nex.client", "nex.cli", "nex.ui"),
    # desired state and placement run on any node, or in the CLI, without a node's internals
    "nex.fleet": ("nex.node", "nex.runtimes", "nex.sandbox", "nex.agent", "nex.cli", "nex.ui"),
    # the one client talks to nodes over NATS only: nothing of the node, the fleet's loop or the CLI
    "nex.client": ("nex.node", "nex.fleet", "nex.runtimes", "nex.sandbox", "nex.agent", "nex.cli", "nex.ui"),
    # placement's rules are pure, below the node's bids, the client and the reconciler
    "nex.placement": ("nex.node", "nex.fleet", "nex.client", "nex.runtimes", "nex.sandbox", "nex.agent",
                      "nex.cli", "nex.ui"),
    # placement and control handling never meet execution: only the supervisor drives runtimes
    "nex.node.bids": ("nex.runtimes", "nex.sandbox", "nex.agent"),
    "nex.node.control": ("nex.runtimes", "nex.sandbox", "nex.agent"),
}

# Outside nex.runtimes, only its contract and its registry are imported: a runtime is added
# (or changed) without touching anything else.
RUNTIMES_FACE = ("nex.runtimes.base", "nex.runtimes.registry")


def module_name(path: Path) -> str:
    parts = path.with_suffix("").relative_to(SRC).parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(module: str, source: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of nex that ``source`` imports, wherever the import statement is."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # ``from nex.api import subjects`` imports the module nex.api.subjects
            names = [origin] + [f"{origin}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in SRC.joinpath("nex").rglob("*.py")}
    known = set(paths)
    return {module: imported(module, path.read_text(), path.name == "__init__.py", known)
            for module, path in paths.items()}


GRAPH = import_graph()


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_violations(module: str, targets: set[str]) -> list[str]:
    found = []
    for layer, allowed in MAY_IMPORT.items():
        if within(module, layer):
            found += [f"{module} imports {t}" for t in sorted(targets)
                      if not within(t, layer) and not any(within(t, a) for a in allowed)]
    for layer, forbidden in MUST_NOT_IMPORT.items():
        if within(module, layer):
            found += [f"{module} imports {t}" for t in sorted(targets) if any(within(t, f) for f in forbidden)]
    return found


def test_the_checker_sees_every_import() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from nex.runtimes.base import Handle\n"
        "def late():\n    import nex.node.node\n"
        "from ..agent import protocol\n"
        "from . import cgroups\n"
    )
    known = {"nex.runtimes.base", "nex.node.node", "nex.agent.protocol", "nex.sandbox.cgroups", "nex.sandbox"}
    assert imported("nex.sandbox.runner", source, False, known) == {
        "nex.runtimes.base", "nex.node.node", "nex.agent.protocol", "nex.sandbox.cgroups", "nex.sandbox"}


def test_the_graph_knows_the_packages() -> None:
    for layer in (*MAY_IMPORT, *MUST_NOT_IMPORT):
        assert any(within(module, layer) for module in GRAPH), layer


@pytest.mark.parametrize("layer", sorted({*MAY_IMPORT, *MUST_NOT_IMPORT}))
def test_layer_imports_only_what_it_may(layer: str) -> None:
    found = [v for module, targets in sorted(GRAPH.items()) if within(module, layer)
             for v in layer_violations(module, targets)]
    assert found == []


def test_only_the_registry_knows_the_runtimes() -> None:
    found = [f"{module} imports {t}" for module, targets in sorted(GRAPH.items()) if not within(module, "nex.runtimes")
             for t in sorted(targets) if within(t, "nex.runtimes") and t not in RUNTIMES_FACE and t != "nex.runtimes"]
    assert found == []


def test_no_import_cycles() -> None:
    """No two modules import each other, directly or through others. A package's ``__init__``
    that re-exports its modules, which import names it defines, is not counted."""
    graph = {module: {t for t in targets if not within(module, t)} for module, targets in GRAPH.items()}
    cycles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert cycles == []
