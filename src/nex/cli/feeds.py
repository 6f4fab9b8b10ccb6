"""``nex logs`` and ``nex events``: read the feeds' history, then follow them."""

from __future__ import annotations

import json
from contextlib import aclosing

import click

from nex.api.errors import WorkloadNotFound
from nex.api.events import CloudEvent
from nex.cli import output
from nex.cli.options import GlobalOptions, NexCommand, with_global_options
from nex.cli.session import resolve_workload, run
from nex.client import NexClient


@click.command("logs", cls=NexCommand)
@click.argument("workload_id", metavar="ID")
@click.option("--follow", "-f", is_flag=True, help="keep printing new lines")
@with_global_options
def logs(opts: GlobalOptions, workload_id: str, follow: bool) -> None:
    """Print a workload's log lines: stdout to stdout, stderr to stderr.

    ID: an id, or a unique prefix or name of a workload a node still lists.
    """

    async def action(client: NexClient) -> None:
        try:
            full_id = await resolve_workload(client, workload_id)
        except WorkloadNotFound:
            full_id = workload_id  # ended: its lines may still be in the stream
        lines = client.logs(full_id, follow=follow)
        async with aclosing(lines):
            async for line in lines:
                if opts.json:
                    output.print_json_line({
                        "workload_id": line.workload_id, "stream": line.stream,
                        "time": line.time.isoformat(), "text": line.text,
                    })
                else:
                    click.echo(line.text, err=line.stream == "stderr")

    run(opts, action)


@click.command("events", cls=NexCommand)
@click.option("--follow", "-f", is_flag=True, help="keep printing new events")
@click.option("--type", "types", multiple=True, metavar="TYPE",
              help="only events of this type, e.g. workload_started (repeatable)")
@with_global_options
def events(opts: GlobalOptions, follow: bool, types: tuple[str, ...]) -> None:
    """Print the events of the namespace (CloudEvents): the audit trail and the activity
    streams merged by time, then, with -f, new ones.

    A call is not an event of its own: each function with calls sends a
    function_stats every few seconds. Nodes with live_call_events on also publish
    a function_invoked per successful call, which -f shows and no stream keeps.
    """

    async def action(client: NexClient) -> None:
        stream = client.events(follow=follow, types=types or None)
        async with aclosing(stream):
            async for event in stream:
                if opts.json:
                    click.echo(event.model_dump_json())
                else:
                    click.echo(_event_line(event))

    run(opts, action)


def _event_line(event: CloudEvent) -> str:
    return " ".join(filter(None, [
        event.time.isoformat(timespec="seconds"), event.event_type,
        output.short(event.source.removeprefix("nex/node/")), event.subject,
        json.dumps(event.data) if event.data else None,
    ]))
