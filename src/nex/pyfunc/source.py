"""A Python function's source, checked before it is built: it compiles, it defines
``handle``, and the modules it imports (anywhere in it) are known.

Checked with this Python's own compiler, so that a syntax error reads
``hello.py:4: SyntaxError: '(' was never closed``, as a JavaScript function's does, and
not as the traceback inside a Rust backtrace that componentize-py would print.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from nex.api.errors import BadRequest

MAX_SOURCE_BYTES = 1 << 20
# Module names the build provides: a user's import of them is not a stdlib module to preload.
PROVIDED = frozenset({"nex", "wit_world", "componentize_py_types", "componentize_py_runtime"})


class BuildError(BadRequest):
    """A Python function that cannot be built: ``file:line: message``, or ``file: message``."""

    def __init__(self, file: str, message: str, line: int | None = None) -> None:
        super().__init__(f"{file}:{line}: {message}" if line is not None else f"{file}: {message}")
        self.file, self.line, self.problem = file, line, message


@dataclass(frozen=True)
class CheckedSource:
    """A module that compiles and defines ``handle``, and the modules it imports."""

    text: bytes
    imports: tuple[str, ...]


def check_source(text: bytes, shown: str) -> CheckedSource:
    """Compile the module and find its ``handle``; raises :class:`BuildError` with the line."""
    if len(text) > MAX_SOURCE_BYTES:
        raise BuildError(shown, f"the module is over {MAX_SOURCE_BYTES} bytes")
    try:
        tree = ast.parse(text, filename=shown)
        compile(tree, shown, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise BuildError(shown, f"{type(exc).__name__}: {exc.msg}", exc.lineno) from None
    except ValueError as exc:  # null bytes
        raise BuildError(shown, f"SyntaxError: {exc}") from None
    _check_handle(tree, shown)
    return CheckedSource(text=text, imports=tuple(sorted(imported_modules(tree))))


def _check_handle(tree: ast.Module, shown: str) -> None:
    found: ast.AST | None = None
    for node in tree.body:  # the last binding at the top wins, as when the module runs
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == "handle":
            found = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                (alias.asname or alias.name.split(".")[0]) == "handle" for alias in node.names):
            found = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and "handle" in _assigned(node):
            found = node
    if found is None:
        raise BuildError(shown, "no function handle(subject, payload) at the top of the module", 1)
    if isinstance(found, ast.AsyncFunctionDef):
        raise BuildError(shown, "handle is async: a Python function is a plain def (host calls do not need await)",
                         found.lineno)
    if isinstance(found, ast.FunctionDef):
        args = found.args
        positional = len(args.posonlyargs) + len(args.args)
        required = positional - len(args.defaults)
        if required > 2 or (positional < 2 and args.vararg is None):
            raise BuildError(shown, "handle must take two arguments: handle(subject, payload)", found.lineno)


def _assigned(node: ast.Assign | ast.AnnAssign) -> set[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return {n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)}


def imported_modules(tree: ast.AST) -> set[str]:
    """Every absolute module an import statement names, at the top or inside functions
    (``from a.b import c`` names ``a.b`` and, maybe a submodule, ``a.b.c``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*")
    return {name for name in names if name.split(".")[0] not in PROVIDED}
