"""``nex dlq``: the dead letters of async invocations, listed and replayed."""

from __future__ import annotations

import click

from nex.cli import output
from nex.cli.options import GlobalOptions, NexGroupHelp, with_global_options
from nex.cli.session import run
from nex.client import AsyncReceipt, NexClient


@click.group(cls=NexGroupHelp)
def dlq() -> None:
    """The async invocations that failed max_attempts times (stream NEX_DLQ)."""


@dlq.command("ls")
@click.argument("function", required=False)
@with_global_options
def dlq_ls(opts: GlobalOptions, function: str | None) -> None:
    """List the dead letters of the namespace, or of FUNCTION (a function's name)."""
    letters = run(opts, lambda client: client.dlq_list(function))
    if opts.json:
        output.print_json(letters)
        return
    if not letters:
        where = f"function {function!r}" if function else f"namespace {opts.namespace!r}"
        output.stderr().print(f"no dead letter in {where}")
        return
    output.table(
        ["SEQ", "FUNCTION", "SUBJECT", "KEY", "ATTEMPTS", "ERROR", "TIME"],
        [[d.seq, d.function, d.subject, d.key, d.attempts, d.error, d.time.isoformat(timespec="seconds")]
         for d in letters],
    )


@dlq.command("replay")
@click.argument("target", metavar="SEQ|FUNCTION", required=False)
@click.option("--all", "replay_all", is_flag=True,
              help="every dead letter of the namespace, or of FUNCTION when given")
@with_global_options
def dlq_replay(opts: GlobalOptions, target: str | None, replay_all: bool) -> None:
    """Publish dead letter SEQ (or --all [FUNCTION]) again on its subject with its key, then delete it."""
    if replay_all:
        function, seq = target, None
    else:
        if target is None or not target.isdigit():
            raise click.UsageError("give the SEQ of a dead letter (see nex dlq ls), or --all [FUNCTION]")
        function, seq = None, int(target)

    async def action(client: NexClient) -> list[tuple[int, AsyncReceipt]]:
        if seq is not None:
            return [(seq, await client.dlq_replay(seq))]
        return [(letter.seq, await client.dlq_replay(letter.seq)) for letter in await client.dlq_list(function)]

    replayed = run(opts, action)
    if opts.json:
        output.print_json([{"dlq_seq": dlq_seq, "stream": r.stream, "seq": r.seq, "key": r.key,
                            "duplicate": r.duplicate} for dlq_seq, r in replayed])
        return
    if not replayed:
        output.stderr().print("no dead letter to replay")
        return
    output.table(["DLQ SEQ", "STREAM", "SEQ", "KEY"], [[d, r.stream, r.seq, r.key] for d, r in replayed])
