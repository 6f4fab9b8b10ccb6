"""``nex ui``: serve the web dashboard on localhost until interrupted."""

from __future__ import annotations

import asyncio
import signal

import click

from nex.api import subjects
from nex.cli.options import GlobalOptions, NexCommand, positive, with_global_options
from nex.cli.session import run
from nex.client import NexClient
from nex.ui import DEFAULT_HOST, DEFAULT_PORT, Dashboard
from nex.ui.server import exposed


def _namespaces(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if not subjects.is_token(value):
            raise click.BadParameter(f"invalid namespace {value!r}: use 1-64 letters, digits, '_' or '-'")
    return values


@click.command("ui", cls=NexCommand)
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="address to listen on; anything but loopback exposes control of the fleet")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="port to listen on (0: any free port)")
@click.option("--watch", "watch", multiple=True, metavar="NS", callback=_namespaces,
              help="also show this namespace (repeatable); -n names the first one")
@click.option("--refresh", type=float, default=2.0, show_default=True, callback=positive, metavar="SECONDS",
              help="how often the nodes and workloads are asked again")
@with_global_options
def ui(opts: GlobalOptions, host: str, port: int, watch: tuple[str, ...], refresh: float) -> None:
    """Serve the web dashboard: nodes, workloads, events, logs, rates; deploy, stop, lame duck.

    \b
    nex ui                       (then open http://127.0.0.1:8223/)
    nex ui --port 9000 --watch shop
    """

    async def action(client: NexClient) -> None:
        clients = [client] + [NexClient(client.nc, ns, client.timeout, client.keys)
                              for ns in dict.fromkeys(watch) if ns != client.namespace]
        dashboard = Dashboard(clients, refresh_s=refresh)
        url = await dashboard.start(host, port)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        if exposed(host):
            click.echo(f"nex: warning: the dashboard listens on {host}: whoever reaches it controls the fleet "
                       "(there is no login)", err=True)
        click.echo(f"Nex dashboard on {url} (namespace {', '.join(c.namespace for c in clients)}); "
                   "Ctrl-C stops it", err=True)
        try:
            await stopping.wait()
        finally:
            await dashboard.stop()

    run(opts, action, create_keys=True)
