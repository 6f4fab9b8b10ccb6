"""``nex devrun``: upload a local file and run it on a node."""

from __future__ import annotations

import asyncio
import shlex
from contextlib import nullcontext
from pathlib import Path

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from pydantic import ValidationError

from nex.api.models import (
    Isolation, Lifecycle, Limits, NetworkMode, Trigger, TriggerMode, WorkloadSummary, WorkloadType,
    describe_validation_error,
)
from nex.cli import output
from nex.cli.options import GlobalOptions, NexCommand, global_options_except, positive
from nex.cli.session import resolve_node, run
from nex.api.errors import NexError
from nex.client import NexClient
from nex.node.config import ConfigError, parse_tags
from nex.pyfunc import build_function, is_python_function
from nex.shadowing import Shadow, same_name_copies, shadows


def parse_env(values: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="'--env'")
        env[key] = value
    return env


def parse_placement_tags(values: tuple[str, ...]) -> dict[str, str]:
    """``--tag zone=a --tag gpu=yes`` or ``--tag zone=a,gpu=yes``: the tags a node must have."""
    tags: dict[str, str] = {}
    for value in values:
        try:
            tags.update(parse_tags(value))
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="'--tag'") from None
    return tags


def parse_async_triggers(subjects: tuple[str, ...], schedules: tuple[str, ...]) -> list[Trigger]:
    """``--async-trigger SUBJECT`` and ``--schedule SUBJECT=CRON`` as triggers; a bad one is a usage error."""
    triggers = [_trigger("--async-trigger", subject=subject, mode=TriggerMode.ASYNC) for subject in subjects]
    for schedule in schedules:
        subject, equals, cron = schedule.partition("=")
        if not equals or not subject.strip() or not cron.strip():
            raise click.BadParameter(f"{schedule!r}: give SUBJECT=CRON, e.g. 'reports.daily=0 6 * * *'",
                                     param_hint="'--schedule'")
        triggers.append(_trigger("--schedule", subject=subject.strip(), schedule=cron.strip()))
    return triggers


def _trigger(option: str, **fields: object) -> Trigger:
    try:
        return Trigger(**fields)
    except ValidationError as exc:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors(include_url=False))
        raise click.BadParameter(problems, param_hint=f"'{option}'") from None


def parse_argv(value: str | None) -> list[str]:
    try:
        return shlex.split(value) if value else []
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc}", param_hint="'--argv'") from None


def file_or_reference(ctx: click.Context, param: click.Parameter, value: str) -> Path | str:
    """An existing file, or an image reference ``oci://host/repo:tag`` left as it is."""
    if value.startswith("oci://"):
        return value
    return click.Path(exists=True, dir_okay=False, path_type=Path).convert(value, param, ctx)


@click.command("devrun", cls=NexCommand)
@click.argument("file", metavar="FILE|oci://HOST/REPO:TAG", callback=file_or_reference)
@click.option("--type", "workload_type", type=click.Choice([t.value for t in WorkloadType]),
              help="workload type [default: guessed from the file]")
@click.option("--trigger", "triggers", multiple=True, metavar="SUBJECT",
              help="subject that invokes the function (repeatable)")
@click.option("--async-trigger", "async_triggers", multiple=True, metavar="SUBJECT",
              help="subject whose messages are kept and run at least once, with retries (repeatable)")
@click.option("--schedule", "schedules", multiple=True, metavar="SUBJECT=CRON",
              help="run on a cron schedule (UTC), once per fleet, as an async call on SUBJECT (repeatable)")
@click.option("--env", "env", multiple=True, metavar="K=V", help="environment variable (repeatable)")
@click.option("--argv", metavar="ARGS", help="arguments, as one shell-quoted string")
@click.option("--name", metavar="N", help="workload name [default: from the file name]")
@click.option("--lifecycle", type=click.Choice([lc.value for lc in Lifecycle]),
              help="[default: function for javascript/wasm, service otherwise]")
@click.option("--node", "node_id", metavar="ID", help="node to run on [default: the best bid of an auction]")
@click.option("--tag", "tags", multiple=True, metavar="K=V[,K=V]",
              help="place on a node that has this tag (repeatable; nex.os, nex.arch... included)")
@click.option("--memory", type=int, callback=positive, metavar="MIB",
              help="memory limit in MiB; a service over it is killed (out of memory)")
@click.option("--cpus", type=float, callback=positive, metavar="N", help="CPU quota, in CPUs (0.5: half of one)")
@click.option("--pids", type=int, callback=positive, metavar="N", help="most processes and threads at once")
@click.option("--network", type=click.Choice([m.value for m in NetworkMode]),
              help="services: none (loopback only) or host [default: the node's, none when sandboxed]")
@click.option("--isolation", type=click.Choice([t.value for t in Isolation]),
              help="services and jobs: run only on a node of this isolation tier or a stronger one "
                   "(process < container < gvisor, the nex.isolation tag)")
@click.option("--timeout", "--timeout-ms", "timeout_ms", type=int, callback=positive, metavar="MS",
              help="function timeout in milliseconds (the request timeout goes before the command: "
                   "nex --timeout S devrun ...)")
@click.option("--max-concurrency", type=int, callback=positive, metavar="N",
              help="functions: calls at once on a copy; past it a call is answered 429 at once")
@click.option("--replace", is_flag=True,
              help="stop the other copies of this name in the namespace once the new one runs")
@global_options_except("timeout")
def devrun(
    opts: GlobalOptions, file: Path | str, workload_type: str | None, triggers: tuple[str, ...],
    env: tuple[str, ...], argv: str | None, name: str | None, lifecycle: str | None,
    node_id: str | None, tags: tuple[str, ...], memory: int | None, cpus: float | None, pids: int | None,
    network: str | None, isolation: str | None, timeout_ms: int | None, max_concurrency: int | None,
    async_triggers: tuple[str, ...], schedules: tuple[str, ...], replace: bool,
) -> None:
    """Upload FILE (or name an image) and run it as a workload on a node.

    \b
    nex devrun ./hello.js --trigger hello
    nex devrun ./jobs.js --async-trigger orders.new  (durable: nex invoke --async orders.new ...)
    nex devrun ./report.js --schedule 'reports.daily=0 6 * * *'
    nex devrun ./server --argv '--port 8080' --env MODE=dev
    nex devrun ./image.tar --argv serve             (an OCI image layout tarball)
    nex devrun oci://127.0.0.1:5000/hello:1         (pulled by the node; nothing uploaded)
    nex devrun ./server --tag zone=a                (on a node tagged zone=a, by auction)
    nex devrun ./hello.js --trigger hello --replace (the new code in place of the old)
    nex devrun ./hello.py --trigger hello           (built into a wasm component, cached)

    A copy of a name that already runs, or a trigger that overlaps another
    workload's, is said on stderr: both would get the calls.
    """
    environment = parse_env(env)
    all_triggers = [*triggers, *parse_async_triggers(async_triggers, schedules)]
    placement = parse_placement_tags(tags)
    if placement and node_id:
        raise click.UsageError("--tag places by auction; it does not go with --node")
    arguments = parse_argv(argv)
    if isinstance(file, Path) and is_python_function(file) and workload_type not in (None, WorkloadType.WASM.value):
        raise click.BadParameter(f"{file} is a Python function, built into a wasm component: its type is wasm",
                                 param_hint="'--type'")
    try:
        limits = Limits(memory_mib=memory, cpus=cpus, pids=pids, timeout_ms=timeout_ms,
                        max_concurrency=max_concurrency)
    except ValidationError as exc:
        raise click.UsageError(describe_validation_error(exc).removeprefix("invalid request: ")) from None
    console = output.stderr()
    bar = Progress(
        TextColumn("uploading {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    )
    # An oci:// reference is pulled by the node: nothing to upload, the bar never starts.
    size = file.stat().st_size if isinstance(file, Path) else None
    task = bar.add_task(Path(str(file)).name, total=size)

    def on_progress(done: int, total: int) -> None:
        # Started on the first report, so the bar does not sit at 0% while a node is picked.
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    async def action(client: NexClient) -> tuple[WorkloadSummary, list[Shadow], list[str]]:
        node = await resolve_node(client, node_id) if node_id else None
        if isinstance(file, Path) and is_python_function(file):
            # Built first, to show that it is (the first build takes seconds); devrun finds it in the cache.
            with console.status(f"building {file.name}", spinner="dots") if console.is_terminal else nullcontext():
                await asyncio.to_thread(build_function, file, str(file))
        try:
            summary = await client.devrun(
                file, type=workload_type, name=name, triggers=all_triggers, env=environment,
                argv=arguments, lifecycle=lifecycle, limits=limits, node_id=node, progress=on_progress,
                network=network, tags=placement, isolation=isolation,
            )
        finally:
            bar.stop()
        try:
            running = await client.workloads(expected_nodes=await client.live_node_count())
        except NexError:
            return summary, [], []  # deployed; what else runs is only worth a note

        stopped = []
        if replace:
            for copy in same_name_copies(summary, running):
                await client.undeploy(copy.id)
                stopped.append(copy.id)
        return summary, [s for s in shadows(summary, running) if s.other.id not in stopped], stopped

    summary, shadowed, stopped = run(opts, action, create_keys=True)
    for warning in summary.warnings or []:  # the node runs it, but may not elsewhere or later
        click.echo(f"nex: warning: {warning}", err=True)
    for shadow in shadowed:
        click.echo(f"nex: note: {shadow.describe(summary.namespace)}", err=True)
    for workload_id in stopped:
        click.echo(f"nex: stopped the old copy {workload_id}", err=True)
    if opts.json:
        output.print_json(summary)
        return
    click.echo(f"{summary.type.value} {summary.lifecycle.value} {summary.name!r} is {summary.state.value}")
    output.fields([
        ("ID", summary.id),
        ("Node", summary.node_id),
        *(("Trigger", t.subject) for t in summary.triggers),
    ])
