"""Docstrings of the Python API, linted: every public module, class, method and function of the
packages ruff's ``include`` lists in pyproject.toml (nex.client and nex.api) has one, well formed
(pydocstyle's rules, as ruff checks them; the rules left out are listed there, with why)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_python_api_has_docstrings_worth_reading():
    ruff = Path(sys.executable).parent / "ruff"
    done = subprocess.run([str(ruff), "check", "--no-cache", "--output-format", "concise"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_linter_covers_the_client_and_the_wire_contract():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]
    assert {"src/nex/client/**/*.py", "src/nex/api/**/*.py"} <= set(config["include"])
    assert config["lint"]["select"] == ["D"]


def test_the_linter_fails_a_public_function_without_a_docstring(tmp_path):
    """The check can fail: a module with an undocumented public function is refused."""
    ruff = Path(sys.executable).parent / "ruff"
    module = tmp_path / "src" / "nex" / "client" / "sloppy.py"
    module.parent.mkdir(parents=True)
    module.write_text('"""A module."""\n\n\ndef call(subject: str) -> bytes:\n    return b""\n')
    done = subprocess.run([str(ruff), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"),
                           str(module)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "D103" in done.stdout, done.stdout + done.stderr
