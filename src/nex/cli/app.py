"""``nex apply`` and ``nex app``: desired state, stored in JetStream KV and kept by the reconciler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from nex.api import subjects
from nex.cli import output
from nex.cli.options import GlobalOptions, NexCommand, NexGroupHelp, with_global_options
from nex.cli.session import run
from nex.client import NexClient
from nex.client.appfile import parse_app_file
from nex.client.appstatus import AppChange, AppView, ReplicaView


@click.command("apply", cls=NexCommand)
@click.option("-f", "--file", "file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="the app file, YAML or JSON")
@click.option("--dry-run", is_flag=True, help="say what would change, change nothing (and upload nothing)")
@with_global_options
def apply(opts: GlobalOptions, file: Path, dry_run: bool) -> None:
    """Store an app (workloads, replicas, placement...) for the fleet's reconciler to run.

    \b
    nex apply -f shop.yaml
    nex apply -f shop.yaml --dry-run
    """
    parsed = parse_app_file(file, opts.namespace, namespace_given=_namespace_given())

    async def action(client: NexClient) -> AppChange:
        return await client.apply_app(parsed, dry_run=dry_run)

    change = run(opts, action, create_keys=True)
    if opts.json:
        output.print_json(change)
        return
    _print_change(change)


def _namespace_given() -> bool:
    """Whether the user named a namespace (-n, before or after the command, or NEX_NAMESPACE)."""
    ctx = click.get_current_context()
    if ctx.params.get("namespace") is not None:
        return True
    root = ctx.find_root()
    return root.get_parameter_source("namespace") not in (ParameterSource.DEFAULT, None)


def _print_change(change: AppChange) -> None:
    app = f"app {change.name!r} in namespace {change.namespace!r}"
    would = "would be" if change.dry_run else "is"
    if change.action == "unchanged":
        click.echo(f"{app} is unchanged (version {change.version})")
        return
    if change.action == "created":
        click.echo(f"{app} {would} created (version {change.version})")
    else:
        click.echo(f"{app} {would} updated to version {change.version}")
    for c in change.workloads:
        if c.change == "added":
            detail = f"{_replicas(c.replicas_to)}, revision {c.revision_to}"
        elif c.change == "removed":
            detail = f"its {_replicas(c.replicas_from)} stop"
        elif c.change == "replaced":
            detail = f"revision {c.revision_from} -> {c.revision_to}, replicas {c.replicas_from} -> {c.replicas_to}"
        elif c.change == "scaled":
            detail = f"replicas {c.replicas_from} -> {c.replicas_to}"
        elif c.change == "changed":
            detail = "placement, restart or update strategy; running replicas stay"
        else:
            detail = f"revision {c.revision_to}, {_replicas(c.replicas_to)}"
        click.echo(f"  {c.name}: {c.change} ({detail})")


def _replicas(count: int | None) -> str:
    return "1 replica" if count == 1 else f"{count} replicas"


@click.group(cls=NexGroupHelp)
def app() -> None:
    """List, inspect and delete the apps of a namespace (nex apply stores them)."""


@app.command("ls")
@click.option("--all-namespaces", "-A", "all_namespaces", is_flag=True, help="the apps of every namespace")
@with_global_options
def app_ls(opts: GlobalOptions, all_namespaces: bool) -> None:
    """List the apps: versions, replicas desired and running, rollout state."""

    async def action(client: NexClient) -> list[AppView]:
        return await client.apps(all_namespaces)

    views = run(opts, action)
    if opts.json:
        output.print_json(views)
        return
    if not views:
        where = "any namespace" if all_namespaces else f"namespace {opts.namespace!r}"
        output.stderr().print(f"no app in {where}")
        return
    output.table(
        ["NAME", "NAMESPACE", "VERSION", "WORKLOADS", "RUNNING", "HEALTHY", "ROLLOUT", "APPLIED"],
        [[v.name, v.namespace, v.version, ", ".join(w.name for w in v.workloads), f"{v.running}/{v.desired}",
          v.healthy, v.rollout, output.age(v.applied_at)] for v in views],
    )


@app.command("status")
@click.argument("name")
@with_global_options
def app_status(opts: GlobalOptions, name: str) -> None:
    """Show one app: desired against actual, each replica with its node, state and health."""
    subjects.check_token(name, "app name")

    async def action(client: NexClient) -> AppView:
        return await client.app_status(name)

    view = run(opts, action)
    if opts.json:
        output.print_json(view)
        return
    pairs: list[tuple[str, Any]] = [
        ("App", view.name), ("Namespace", view.namespace),
        ("Version", view.version), ("Applied", f"{view.applied_at.isoformat()} ({output.age(view.applied_at)} ago)"),
        ("Replicas", f"{view.running}/{view.desired} running, {view.healthy} healthy"),
        ("Rollout", view.rollout),
    ]
    pairs.append(("Signed by", view.applied_by or "nobody (unsigned)"))
    if view.refused:
        pairs.append(("Refused", f"{view.refused}; the last verified version keeps running"))
    if view.reconciled_at is not None:
        pairs.append(("Reconciled", f"version {view.reconciled_version}, {output.age(view.reconciled_at)} ago "
                                    f"by {output.short(view.reconciler or '-')}"))
    else:
        pairs.append(("Reconciled", "not yet: is a node with the reconciler running?"))
    output.fields(pairs)
    for w in view.workloads:
        click.echo()
        rollout = w.rollout.value if w.rollout else "pending"
        line = (f"{w.name} ({w.type.value}, revision {w.revision}): {w.running}/{w.desired} running, "
                f"{w.healthy} healthy, {w.up_to_date} up to date, rollout {rollout}")
        if w.restarts:
            line += f", {w.restarts} restarts"
        click.echo(line)
        if w.message:
            click.echo(f"  {w.message}")
        if w.last_failure and w.last_failure not in (w.message or ""):
            click.echo(f"  last failure: {w.last_failure}")
        _replica_table(w.replicas)
    if view.leftover:
        click.echo()
        click.echo("replicas of removed workloads (being stopped):")
        _replica_table(view.leftover)


def _replica_table(replicas: list[ReplicaView]) -> None:
    if not replicas:
        click.echo("  no replica")
        return
    reasons = any(r.reason for r in replicas)  # a column only when some replica has something to say
    output.table(
        ["REPLICA", "NODE", "STATE", "HEALTH", "REVISION", "AGE"] + (["REASON"] if reasons else []),
        [[r.id, f"{r.node_name} ({output.short(r.node_id)})"
          + ("" if r.node_state.value == "running" else f" {r.node_state.value}"),
          r.state.value, r.health.value if r.health else "-",
          r.revision + ("" if r.current else " (old)"), output.age(r.started_at)]
         + ([r.reason or "-"] if reasons else []) for r in replicas],
    )


@app.command("delete")
@click.argument("name")
@click.option("--wait", is_flag=True, help="wait until no replica of the app runs (at most --timeout)")
@with_global_options
def app_delete(opts: GlobalOptions, name: str, wait: bool) -> None:
    """Delete an app: a tombstone, signed with your keys, on which the reconciler stops its replicas."""
    subjects.check_token(name, "app name")

    async def action(client: NexClient) -> int:
        return await client.delete_app(name, wait=wait, timeout=opts.timeout)

    remaining = run(opts, action)
    if opts.json:
        output.print_json({"name": name, "namespace": opts.namespace, "deleted": True, "replicas": remaining})
    elif remaining:
        click.echo(f"app {name!r} is deleted; the reconciler stops its {_replicas(remaining)}")
    else:
        click.echo(f"app {name!r} is deleted")

