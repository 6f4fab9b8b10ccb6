"""``nex invoke``: call a function through a trigger subject, or invoke it async."""

from __future__ import annotations

import json
import sys

import click

from nex.api.tracecontext import TraceParent
from nex.cli import output
from nex.cli.options import GlobalOptions, NexCommand, with_global_options
from nex.cli.session import run


@click.command("invoke", cls=NexCommand)
@click.argument("subject")
@click.argument("payload", required=False)
@click.option("--async", "async_", is_flag=True,
              help="publish into the function's stream (an async trigger) and print where it is kept")
@click.option("--key", metavar="K", help="with --async: the idempotency key (Nats-Msg-Id)")
@click.option("--reply-to", metavar="SUBJECT", help="with --async: where the function's result is published")
@click.option("--trace", is_flag=True, help="start a trace: send a new traceparent, print its trace id on stderr")
@with_global_options
def invoke(opts: GlobalOptions, subject: str, payload: str | None, async_: bool, key: str | None,
           reply_to: str | None, trace: bool) -> None:
    """Send PAYLOAD (or stdin with '-') to SUBJECT and print the reply as is (on a terminal,
    with a newline after it when it has none). With --async, print the stream sequence and key."""
    if (key is not None or reply_to is not None) and not async_:
        raise click.UsageError("--key and --reply-to go with --async")
    if payload == "-":
        data = sys.stdin.buffer.read()
    else:
        data = (payload or "").encode()
    traceparent = TraceParent.new() if trace else None
    if traceparent is not None:
        click.echo(f"trace id {traceparent.trace_id}", err=True)
    if async_:
        receipt = run(opts, lambda client: client.invoke_async(subject, data, key=key, reply_to=reply_to,
                                                               traceparent=traceparent))
        fields = {"stream": receipt.stream, "seq": receipt.seq, "key": receipt.key, "duplicate": receipt.duplicate}
        if opts.json:
            click.echo(json.dumps(fields))
        else:
            output.fields([("Stream", receipt.stream), ("Seq", receipt.seq), ("Key", receipt.key)]
                          + ([("Duplicate", "yes: a message with this key was kept already")]
                             if receipt.duplicate else []))
        return
    reply = run(opts, lambda client: client.invoke(subject, data, timeout=opts.timeout, traceparent=traceparent))
    sys.stdout.buffer.write(reply)
    if sys.stdout.isatty() and not reply.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")  # the prompt on a line of its own; a pipe gets the bytes only
    sys.stdout.buffer.flush()
