"""The README's quick start ("Five minutes with Nex"), command by command, against a real node
(tests/docrun.py says how the blocks are marked); its files are those of examples/quickstart."""

from __future__ import annotations

import re
from pathlib import Path

from docrun import QUICKSTART, blocks, follow

README = Path(__file__).parent.parent / "README.md"
WALL_LIMIT_S = 300


def quick_start() -> str:
    text = README.read_text()
    start = text.index("## Five minutes with Nex")
    return text[start:text.index("\n## ", start + 1)]


def test_every_block_of_the_quick_start_is_marked_and_every_file_it_uses_is_shipped():
    marks = [mark for mark, _ in blocks(quick_start())]
    assert marks and None not in marks, "an sh block without a guide-test marker"
    assert marks.count("node") == 1 and marks.count("examples") == 1
    assert set(marks) <= {"run", "node", "examples", "skip"}
    used = set(re.findall(r"examples/quickstart/([\w.]+)", quick_start()))
    built = {"upper.wasm", "ticker", "job"}  # by `make examples`, from the .c files beside them
    assert used and used <= {p.name for p in QUICKSTART.iterdir()} | built, used
    assert {f"{Path(name).stem}.c" for name in built} <= {p.name for p in QUICKSTART.iterdir()}


def test_the_quick_start_hello_is_the_guides():
    guide = (README.parent / "docs" / "getting-started.md").read_text()
    hello = (QUICKSTART / "hello.js").read_text()
    assert f"cat > hello.js <<'JS'\n{hello}JS\n" in guide


async def test_a_new_user_runs_the_quick_start(tmp_path):
    log = await follow(quick_start(), tmp_path, WALL_LIMIT_S)
    assert "DEV MODE" in log.read_text()
