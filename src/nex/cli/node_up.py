"""`nex node up`: run a node in the foreground."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.logging import RichHandler

from nex.natsserver import NatsServerError
from nex.node.config import ConfigError, load_config, parse_tags


@click.command("up")
@click.option("--server", "-s", envvar="NATS_URL", help="NATS URL(s); none: start an embedded nats-server")
@click.option("--port", type=int, default=None, help="port of the embedded nats-server [default: 4222]")
@click.option("--creds", type=click.Path(dir_okay=False), help="NATS credentials file")
@click.option("--user", help="NATS user")
@click.option("--password", help="NATS password")
@click.option("--nkey", type=click.Path(dir_okay=False), help="file holding an nkey seed")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="client certificate (PEM)")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="client key (PEM)")
@click.option("--tls-ca", type=click.Path(dir_okay=False), help="CA bundle (PEM)")
@click.option("--name", help="node name [default: from the node id]")
@click.option("--tags", default=None, help="k=v,... tags added to the automatic ones")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), help="where the node keeps its state")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="TOML or JSON config file")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
def node_up(config_path: Path | None, tags: str | None, log_level: str, **flags: object) -> None:
    """Run a node: take workloads over NATS until SIGINT or SIGTERM."""
    from nex.node.node import Node

    logging.basicConfig(
        level=log_level.upper(), format="%(message)s", datefmt="%H:%M:%S",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    try:
        overrides = dict(flags)
        overrides["tags"] = parse_tags(tags) if tags else None
        config = load_config(config_path, overrides)
        asyncio.run(Node(config).run())
    except (ConfigError, NatsServerError) as exc:
        click.echo(f"nex: error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"nex: error: {exc}", err=True)
        sys.exit(1)
