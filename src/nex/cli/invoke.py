"""``nex invoke``: call a function through a trigger subject."""

from __future__ import annotations

import sys

import click

from nex.cli.options import GlobalOptions, NexCommand, with_global_options
from nex.cli.session import run


@click.command("invoke", cls=NexCommand)
@click.argument("subject")
@click.argument("payload", required=False)
@with_global_options
def invoke(opts: GlobalOptions, subject: str, payload: str | None) -> None:
    """Send PAYLOAD (or stdin with '-') to SUBJECT and print the reply as is (on a terminal,
    with a newline after it when it has none)."""
    if payload == "-":
        data = sys.stdin.buffer.read()
    else:
        data = (payload or "").encode()
    reply = run(opts, lambda client: client.invoke(subject, data, timeout=opts.timeout))
    sys.stdout.buffer.write(reply)
    if sys.stdout.isatty() and not reply.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")  # the prompt on a line of its own; a pipe gets the bytes only
    sys.stdout.buffer.flush()
