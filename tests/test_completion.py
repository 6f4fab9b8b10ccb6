"""Shell completion (bash, zsh) and `nex --version`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nex import API_VERSION, __version__

BIN = Path(sys.executable).parent  # where the `nex` entry point is installed


def nex(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nex", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def bash(script: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_names_the_package_and_the_control_api(flag):
    result = nex(flag)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"nex {__version__} (control API {API_VERSION})\n"


def test_the_bash_script_sources_and_registers_nex():
    result = bash('source <(nex completion bash) && complete -p nex')
    assert result.returncode == 0 and result.stderr == ""
    assert "-F _nex_completion" in result.stdout and result.stdout.rstrip().endswith(" nex")


@pytest.mark.parametrize("words, cword, expected", [
    ("nex wo", 1, {"workload"}),
    ("nex node pre", 2, {"preflight"}),
    ("nex completion ", 2, {"bash", "zsh"}),
])
def test_tab_in_bash_completes_commands_and_choices(words, cword, expected):
    # What bash does on <TAB>: set COMP_WORDS and COMP_CWORD, call the function, read COMPREPLY.
    script = ('source <(nex completion bash) && '
              f'COMP_WORDS=({words}) COMP_CWORD={cword} && '
              '_nex_completion nex && printf "%s\\n" "${COMPREPLY[@]}"')
    if words.endswith(" "):
        script = script.replace(f"COMP_WORDS=({words})", f"COMP_WORDS=({words.strip()} '')")
    result = bash(script)
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == expected


def test_click_answers_the_bash_protocol_directly():
    result = nex(env={"COMP_WORDS": "nex wo", "COMP_CWORD": "1", "_NEX_COMPLETE": "bash_complete"})
    assert result.returncode == 0 and result.stdout.split() == ["plain,workload"]


def test_the_zsh_script_and_its_protocol():
    script = nex("completion", "zsh")
    assert script.returncode == 0
    assert script.stdout.startswith("#compdef nex") and "_NEX_COMPLETE=zsh_complete" in script.stdout
    result = nex(env={"COMP_WORDS": "nex wo", "COMP_CWORD": "1", "_NEX_COMPLETE": "zsh_complete"})
    assert result.returncode == 0 and "workload" in result.stdout.splitlines()


def test_an_unknown_shell_is_refused():
    result = nex("completion", "fish")
    assert result.returncode == 2 and result.stdout == ""
    assert "'fish' is not one of 'bash', 'zsh'" in result.stderr
