"""docs/getting-started.md, followed by the letter: its shell blocks run against a real node
(tests/docrun.py says how the blocks are marked)."""

from __future__ import annotations

from pathlib import Path

from docrun import blocks, commands, follow, in_order

GUIDE = Path(__file__).parent.parent / "docs" / "getting-started.md"
WALL_LIMIT_S = 300


def test_every_block_of_the_guide_is_marked_for_this_test():
    marks = [mark for mark, _ in blocks(GUIDE.read_text())]
    assert marks and None not in marks, "an sh block without a guide-test marker"
    assert set(marks) <= {"run", "node", "skip"}
    assert marks.count("node") == 1
    node_block = next(text for mark, text in blocks(GUIDE.read_text()) if mark == "node")
    assert node_block.strip() == "make run"


async def test_a_new_user_follows_the_guide(tmp_path):
    log = await follow(GUIDE.read_text(), tmp_path, WALL_LIMIT_S)
    assert "DEV MODE" in log.read_text()


def test_commands_split_as_a_shell_would_read_them():
    parsed = commands("cat > a.js <<'JS'\nx => x  # → not a promise\nJS\n"
                      "# a comment\nnex invoke a b   # → {\"a\" … 1}\n")
    assert [c.text for c in parsed] == ["cat > a.js <<'JS'\nx => x  # → not a promise\nJS", "nex invoke a b"]
    assert parsed[0].expect == [] and parsed[1].expect == ['{"a"', "1}"]
    assert in_order("a then b", ["a", "b"]) and not in_order("b then a", ["a", "then", "a", "b", "x"])
