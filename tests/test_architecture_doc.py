"""docs/architecture.md names every module of the code, so that the map keeps up with the
territory: a module added without a word there fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
SOURCE = ROOT / "src" / "nex"
DOC = ROOT / "docs" / "architecture.md"


def modules() -> list[str]:
    """Every module and package of nex, dotted; entry points (``__main__``) stand for their package."""
    found = set()
    for path in SOURCE.rglob("*.py"):
        parts = path.relative_to(SOURCE.parent).with_suffix("").parts
        if parts[-1] in ("__init__", "__main__"):
            parts = parts[:-1]
        found.add(".".join(parts))
    return sorted(found)


def named(module: str, doc: str) -> bool:
    """Whether the doc names the module: dotted in full, or by the rest of its name in the row
    or paragraph that names one of its packages (`nex.agent` ... `durable.streams`)."""
    if re.search(rf"`{re.escape(module)}`", doc) or f"{module}." in doc or f"python -m {module}" in doc:
        return True
    blocks = re.split(r"\n(?=\|)|\n\n", doc)
    parts = module.split(".")
    for cut in range(2, len(parts)):
        package, rest = ".".join(parts[:cut]), ".".join(parts[cut:])
        # `lease`, `js.quickjs_engine`, `durable.streams (...)`
        short = rf"`(?:[\w.]+\.)?{re.escape(rest)}\b[^`]*`"
        if any(f"`{package}`" in block and re.search(short, block) for block in blocks):
            return True
    return False


def test_every_module_is_in_the_architecture_doc():
    doc = DOC.read_text()
    missing = [m for m in modules() if not named(m, doc)]
    assert missing == [], f"docs/architecture.md does not name: {', '.join(missing)}"
