"""``nex devrun``: upload a local file and run it on a node."""

from __future__ import annotations

import shlex
from pathlib import Path

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from nex.api.models import Lifecycle, Limits, WorkloadSummary, WorkloadType
from nex.cli import output
from nex.cli.options import GlobalOptions, NexCommand, positive, with_global_options
from nex.cli.session import resolve_node, run
from nex.client import NexClient


def parse_env(values: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="'--env'")
        env[key] = value
    return env


def parse_argv(value: str | None) -> list[str]:
    try:
        return shlex.split(value) if value else []
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc}", param_hint="'--argv'") from None


@click.command("devrun", cls=NexCommand)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--type", "workload_type", type=click.Choice([t.value for t in WorkloadType]),
              help="workload type [default: guessed from the file]")
@click.option("--trigger", "triggers", multiple=True, metavar="SUBJECT",
              help="subject that invokes the function (repeatable)")
@click.option("--env", "env", multiple=True, metavar="K=V", help="environment variable (repeatable)")
@click.option("--argv", metavar="ARGS", help="arguments, as one shell-quoted string")
@click.option("--name", metavar="N", help="workload name [default: from the file name]")
@click.option("--lifecycle", type=click.Choice([lc.value for lc in Lifecycle]),
              help="[default: function for javascript/wasm, service otherwise]")
@click.option("--node", "node_id", metavar="ID", help="node to run on [default: the least busy]")
@click.option("--memory", type=int, callback=positive, metavar="MIB", help="memory limit in MiB")
@click.option("--timeout-ms", type=int, callback=positive, metavar="MS", help="function timeout")
@with_global_options
def devrun(
    opts: GlobalOptions, file: Path, workload_type: str | None, triggers: tuple[str, ...],
    env: tuple[str, ...], argv: str | None, name: str | None, lifecycle: str | None,
    node_id: str | None, memory: int | None, timeout_ms: int | None,
) -> None:
    """Upload FILE and run it as a workload on a node.

    \b
    nex devrun ./hello.js --trigger hello
    nex devrun ./server --argv '--port 8080' --env MODE=dev
    """
    environment = parse_env(env)
    arguments = parse_argv(argv)
    limits = Limits(memory_mib=memory, timeout_ms=timeout_ms)
    console = output.stderr()
    bar = Progress(
        TextColumn("uploading {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    )
    task = bar.add_task(file.name, total=file.stat().st_size)

    def on_progress(done: int, total: int) -> None:
        # Started on the first report, so the bar does not sit at 0% while a node is picked.
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    async def action(client: NexClient) -> WorkloadSummary:
        node = await resolve_node(client, node_id) if node_id else None
        try:
            return await client.devrun(
                file, type=workload_type, name=name, triggers=triggers, env=environment,
                argv=arguments, lifecycle=lifecycle, limits=limits, node_id=node, progress=on_progress,
            )
        finally:
            bar.stop()

    summary = run(opts, action)
    if opts.json:
        output.print_json(summary)
        return
    click.echo(f"{summary.type.value} {summary.lifecycle.value} {summary.name!r} is {summary.state.value}")
    output.fields([
        ("ID", summary.id),
        ("Node", summary.node_id),
        *(("Trigger", t.subject) for t in summary.triggers),
    ])
