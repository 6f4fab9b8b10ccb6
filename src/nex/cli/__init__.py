"""The ``nex`` command: a thin shell over :mod:`nex.client`.

Every command is a click command in the module of its group; this module holds
the root group, the error handling they share and :func:`main`.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import click

from nex import __version__
from nex.cli.app import app, apply
from nex.cli.completion import completion, version_text
from nex.cli.devrun import devrun
from nex.cli.dlq import dlq
from nex.cli.feeds import events, logs
from nex.cli.invoke import invoke
from nex.cli.keys import keys
from nex.cli.monitor import monitor
from nex.cli.node import node
from nex.cli.node_up import node_up
from nex.cli.options import GlobalOptions, NexGroupHelp, root_options
from nex.cli.output import describe_error
from nex.cli.preflight import preflight
from nex.cli.ui import ui
from nex.cli.workload import workload

__all__ = ["ErrorExit", "cli", "main"]


class ErrorExit(click.ClickException):
    """An expected failure: one line on stderr, exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"nex: error: {self.message}", err=True)


class NexGroup(NexGroupHelp):
    """The root group: turns every expected failure into :class:`ErrorExit`."""

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
            raise ErrorExit(message) from None


@click.group(cls=NexGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="nex", message=version_text())
@root_options
@click.pass_context
def cli(ctx: click.Context, opts: GlobalOptions) -> None:
    """Nex, the NATS execution engine: run functions and services on NATS."""
    ctx.obj = opts


cli.add_command(node)
cli.add_command(workload)
cli.add_command(devrun)
cli.add_command(logs)
cli.add_command(events)
cli.add_command(invoke)
cli.add_command(dlq)
cli.add_command(keys)
cli.add_command(apply)
cli.add_command(app)
cli.add_command(ui)
node.add_command(node_up, "up")
node.add_command(preflight)
cli.add_command(monitor)
cli.add_command(completion)


def main() -> NoReturn:
    sys.exit(cli.main(prog_name="nex"))


def _silence_stdout() -> None:
    # Output piped into `head` that exited: further writes (even at shutdown) would fail again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
