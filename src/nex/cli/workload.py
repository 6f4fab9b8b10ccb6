"""``nex workload``: list, inspect and stop workloads."""

from __future__ import annotations

import click

from nex.api.models import UndeployResponse, WorkloadSummary
from nex.cli import output
from nex.cli.options import GlobalOptions, NexGroupHelp, with_global_options
from nex.cli.session import resolve_workload, run
from nex.client import NexClient


@click.group(cls=NexGroupHelp)
def workload() -> None:
    """List, inspect and stop the workloads of a namespace."""


@workload.command("ls")
@with_global_options
def workload_ls(opts: GlobalOptions) -> None:
    """List the workloads of every node that answers."""
    workloads = sorted(run(opts, lambda client: client.workloads()), key=lambda w: (w.name, w.id))
    if opts.json:
        output.print_json(workloads)
        return
    if not workloads:
        output.stderr().print(f"no workload in namespace {opts.namespace!r}")
        return
    output.table(
        ["ID", "NAME", "TYPE", "LIFECYCLE", "STATE", "NODE", "AGE", "TRIGGERS"],
        [[w.id, w.name, w.type.value, w.lifecycle.value, w.state.value,
          output.short(w.node_id), output.age(w.started_at), " ".join(t.subject for t in w.triggers)]
         for w in workloads],
    )


@workload.command("info")
@click.argument("workload_id", metavar="ID")
@with_global_options
def workload_info(opts: GlobalOptions, workload_id: str) -> None:
    """Show one workload (ID: an id, a unique prefix or name)."""

    async def action(client: NexClient) -> WorkloadSummary:
        return await client.workload_info(await resolve_workload(client, workload_id))

    w = run(opts, action)
    if opts.json:
        output.print_json(w)
        return
    pairs: list[tuple[str, object]] = [
        ("ID", w.id), ("Name", w.name), ("Namespace", w.namespace), ("Type", w.type.value),
        ("Lifecycle", w.lifecycle.value), ("State", w.state.value), ("Node", w.node_id),
        ("Artifact", f"{w.artifact.uri} (sha256 {w.artifact.sha256[:16]}...)"),
        ("Started", f"{w.started_at.isoformat()} ({output.age(w.started_at)} ago)"),
    ]
    if w.stopped_at:
        pairs.append(("Stopped", w.stopped_at.isoformat()))
    if w.pid is not None:
        pairs.append(("PID", w.pid))
    if w.argv:
        pairs.append(("Argv", " ".join(w.argv)))
    if w.env_keys:
        pairs.append(("Env", ", ".join(w.env_keys)))
    if w.triggers:
        pairs.append(("Triggers", ", ".join(t.subject for t in w.triggers)))
    limits = w.limits.model_dump(exclude_none=True)
    if limits:
        pairs.append(("Limits", ", ".join(f"{k}={v}" for k, v in limits.items())))
    if w.usage is not None:
        pairs.append(("Usage", output.usage_text(w.usage)))
    if w.invocations is not None:
        rejected = f", {w.rejected} rejected: busy" if w.rejected else ""
        pairs.append(("Invocations", f"{w.invocations} ({w.errors or 0} failed{rejected})"))
    if w.exit:
        pairs.append(("Exit", _exit_text(w.exit.model_dump(exclude_none=True))))
    if w.reason:
        pairs.append(("Reason", w.reason))
    pairs.extend(("Warning", warning) for warning in w.warnings or [])
    output.fields(pairs)
    if w.stderr_tail:
        click.echo(f"\nLast lines on stderr (all of them: nex logs {w.id}):")
        for line in w.stderr_tail:
            click.echo(f"  {line}")


@workload.command("stop")
@click.argument("workload_id", metavar="ID")
@click.option("--grace-ms", type=click.IntRange(min=0), metavar="MS",
              help="time to end on its own before it is killed [default: the node's]")
@with_global_options
def workload_stop(opts: GlobalOptions, workload_id: str, grace_ms: int | None) -> None:
    """Stop a workload and remove it from its node."""

    async def action(client: NexClient) -> UndeployResponse:
        return await client.undeploy(await resolve_workload(client, workload_id), grace_ms)

    reply = run(opts, action)
    if opts.json:
        output.print_json(reply)
    else:
        click.echo(f"workload {reply.id} is {reply.state.value}")


def _exit_text(exit_info: dict[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in exit_info.items()) or "-"
