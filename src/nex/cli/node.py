"""``nex node``: list, inspect and drain nodes."""

from __future__ import annotations

import click

from nex.api.models import Isolation, LameDuckResponse, NodeInfo, NodePing, NodeState, node_isolation
from nex.cli import output
from nex.cli.options import GlobalOptions, NexGroupHelp, with_global_options
from nex.cli.session import resolve_node, run
from nex.client import NexClient


@click.group(cls=NexGroupHelp)
def node() -> None:
    """List, inspect and drain the nodes of a namespace."""


@node.command("ls")
@with_global_options
def node_ls(opts: GlobalOptions) -> None:
    """List the nodes that answer a ping."""
    nodes = sorted(run(opts, lambda client: client.ping()), key=lambda n: (n.name, n.node_id))
    if opts.json:
        output.print_json(nodes)
        return
    if not nodes:
        output.stderr().print(f"no node answered in namespace {opts.namespace!r}")
        return
    output.table(
        ["ID", "NAME", "VERSION", "STATE", "ISOLATION", "UPTIME", "WORKLOADS", "RECONCILES", "TAGS"],
        [_ping_row(n) for n in nodes],
    )


@node.command("info")
@click.argument("node_id", metavar="ID")
@with_global_options
def node_info(opts: GlobalOptions, node_id: str) -> None:
    """Show a node's resources, runtimes and workloads (ID: an id, a unique prefix or name)."""

    async def action(client: NexClient) -> NodeInfo:
        return await client.node_info(await resolve_node(client, node_id))

    info = run(opts, action)
    if opts.json:
        output.print_json(info)
        return
    gib = 1024**3
    output.fields([
        ("ID", info.node_id),
        ("Name", info.name),
        ("Version", f"{info.version} (API {info.api_version})"),
        ("State", info.state.value),
        ("Uptime", output.duration(info.uptime_s)),
        ("Isolation", _isolation_text(info.tags)),
        ("Tags", _tags(info.tags)),
        ("XKey", info.xkey),
        ("Trust", "DEV MODE: unsigned deploys accepted" if info.dev_mode else "signed deploys of trusted issuers"),
        ("Runtimes", ", ".join(r.value for r in info.runtimes)),
        ("CPUs", info.resources.cpus),
        ("Memory", f"{info.resources.memory_available_bytes / gib:.1f} GiB free "
                   f"of {info.resources.memory_bytes / gib:.1f} GiB"),
        ("Load (1m)", f"{info.resources.load_1m:.2f}"),
        ("Workloads", info.workload_count),
    ])
    if info.workloads:
        click.echo()
        output.table(
            ["ID", "NAME", "TYPE", "STATE", "AGE", "USAGE"],
            [[w.id, w.name, w.type.value, w.state.value, output.age(w.started_at), output.usage_text(w.usage)]
             for w in info.workloads],
        )


@node.command("lameduck")
@click.argument("node_id", metavar="ID")
@with_global_options
def node_lameduck(opts: GlobalOptions, node_id: str) -> None:
    """Put a node in lame duck mode: it takes no new work and drains."""

    async def action(client: NexClient) -> LameDuckResponse:
        return await client.lameduck(await resolve_node(client, node_id))

    reply = run(opts, action)
    if opts.json:
        output.print_json(reply)
    else:
        state = "in lame duck mode" if reply.state == NodeState.LAMEDUCK else reply.state.value
        click.echo(f"node {reply.node_id} is {state}")


def _ping_row(n: NodePing) -> list[object]:
    return [output.short(n.node_id), n.name, n.version, n.state.value, node_isolation(n.tags).value,
            output.duration(n.uptime_s), n.workload_count, "yes" if n.reconciles else "no", _tags(n.tags)]


def _isolation_text(tags: dict[str, str]) -> str:
    tier = node_isolation(tags)
    runtime = f" ({tags['nex.sandbox']})" if "nex.sandbox" in tags else ""
    return {Isolation.PROCESS: "process: plain processes with the node's user",
            Isolation.CONTAINER: f"container{runtime}: namespaces, seccomp, cgroups; the host's kernel",
            Isolation.GVISOR: f"gvisor{runtime}: gVisor's kernel between workloads and the host's"}[tier]


def _tags(tags: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(tags.items()))
