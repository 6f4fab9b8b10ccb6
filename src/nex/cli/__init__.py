"""The ``nex`` command: a thin shell over :mod:`nex.client`.

Every command is a click command in the module of its group; this module holds
the root group, the error handling they share and :func:`main`.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable, NoReturn

import click

from nex import __version__
from nex.cli.completion import version_text
from nex.cli.options import GlobalOptions, NexGroupHelp, root_options
from nex.cli.output import describe_error, error_hint, print_error

__all__ = ["ErrorExit", "cli", "main"]


class ErrorExit(click.ClickException):
    """An expected failure: one line on stderr (and the hint, if any, on the next), exit status 1."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def show(self, file: Any = None) -> None:
        print_error(self.message, self.hint)


class NexGroup(NexGroupHelp):
    """The root group: turns every expected failure into :class:`ErrorExit`, and loads each
    command (``LAZY_COMMANDS``) when it is first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in LAZY_COMMANDS:
            self.add_command(LAZY_COMMANDS[name](), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None
        except BrokenPipeError:
            _silence_stdout()
            raise click.exceptions.Exit(1) from None
        except Exception as exc:
            message = describe_error(exc)
            if message is None:
                raise  # a bug: keep the traceback
            raise ErrorExit(message, error_hint(exc)) from None


@click.group(cls=NexGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="nex", message=version_text())
@root_options
@click.pass_context
def cli(ctx: click.Context, opts: GlobalOptions) -> None:
    """Nex, the NATS execution engine: run functions and services on NATS."""
    ctx.obj = opts


def _node_group() -> click.Command:
    from nex.cli.node import node
    from nex.cli.node_up import node_up
    from nex.cli.preflight import preflight

    if "up" not in node.commands:
        node.add_command(node_up, "up")
        node.add_command(preflight)
    return node


def _command(module: str, name: str) -> Callable[[], click.Command]:
    return lambda: getattr(importlib.import_module(module), name)


# Each command's module is imported when the command is asked for: `nex invoke` does not
# load the dashboard, the app files or the monitor (the CLI starts in about 0.8 s, not 1.2).
LAZY_COMMANDS: dict[str, Callable[[], click.Command]] = {
    "node": _node_group,
    "workload": _command("nex.cli.workload", "workload"),
    "devrun": _command("nex.cli.devrun", "devrun"),
    "logs": _command("nex.cli.feeds", "logs"),
    "events": _command("nex.cli.feeds", "events"),
    "invoke": _command("nex.cli.invoke", "invoke"),
    "dlq": _command("nex.cli.dlq", "dlq"),
    "keys": _command("nex.cli.keys", "keys"),
    "creds": _command("nex.cli.creds", "creds"),
    "apply": _command("nex.cli.app", "apply"),
    "app": _command("nex.cli.app", "app"),
    "ui": _command("nex.cli.ui", "ui"),
    "monitor": _command("nex.cli.monitor", "monitor"),
    "completion": _command("nex.cli.completion", "completion"),
}


def main() -> NoReturn:
    sys.exit(cli.main(prog_name="nex"))


def _silence_stdout() -> None:
    # Output piped into `head` that exited: further writes (even at shutdown) would fail again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
