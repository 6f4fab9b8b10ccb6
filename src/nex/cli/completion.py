"""`nex completion bash|zsh`, and the text of `nex --version`.

Completion is click's own: the script printed here calls ``nex`` back with
``_NEX_COMPLETE=<shell>_complete`` at every <TAB>, so commands, options and choices
complete from the live command tree. The command only spares users the environment
variable that prints the script (``_NEX_COMPLETE=bash_source nex``).
"""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

from nex import API_VERSION, __version__

PROG_NAME = "nex"
COMPLETE_VAR = "_NEX_COMPLETE"
SHELLS = ("bash", "zsh")


def version_text() -> str:
    """``nex 0.1.0 (control API v1)``: this package and the control API it speaks."""
    return f"{PROG_NAME} {__version__} (control API {API_VERSION})"


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (bash or zsh).

    \b
    bash:  nex completion bash > ~/.local/share/bash-completion/completions/nex
           (or add  eval "$(nex completion bash)"  to ~/.bashrc)
    zsh:   nex completion zsh > "${fpath[1]}/_nex"
           (or add  eval "$(nex completion zsh)"  to ~/.zshrc, after compinit)
    """
    root = click.get_current_context().find_root()
    complete = get_completion_class(shell)
    assert complete is not None  # every shell of SHELLS is one of click's
    click.echo(complete(root.command, {}, PROG_NAME, COMPLETE_VAR).source())
