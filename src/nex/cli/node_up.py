"""`nex node up`: run a node in the foreground."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.logging import RichHandler

from nats.errors import NoServersError

from nex.api.errors import NatsUnavailable
from nex.cli.options import GlobalOptions, with_global_options
from nex.cli.output import describe_error, print_error
from nex.connection import NoNatsServer
from nex.natsserver import NatsServerError, PortTaken, next_free_port
from nex.node.config import ConfigError, load_config, parse_tags
from nex.node.statelock import StateDirInUse
from nex.sandbox.runner import SandboxUnavailable


@click.command("up")
@click.option("--port", type=int, default=None, help="port of the embedded nats-server [default: 4222]")
@click.option("--name", help="node name [default: from the node id]")
@click.option("--tags", default=None, help="k=v,... tags added to the automatic ones")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), help="where the node keeps its state")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="TOML or JSON config file")
@click.option("--sandbox", type=click.Choice(["auto", "oci", "gvisor", "none"]), default=None,
              help="native workloads and containers: auto = sandboxed by runc/crun when it works here, else "
                   "plain processes (tagged nex.unsafe=true); oci = sandboxed or refuse to start; gvisor = "
                   "under gVisor's runsc or refuse to start; none = plain processes [default: auto]")
@click.option("--gvisor-platform", type=click.Choice(["systrap", "ptrace", "kvm"]), default=None,
              help="with --sandbox gvisor: runsc's platform [default: the first of systrap, ptrace that works]")
@click.option("--trusted-issuer", "trusted_issuers", multiple=True, metavar="A...",
              help="account nkey whose signed deploys run here (repeatable); none: dev mode, unsigned "
                   "requests accepted")
@click.option("--artifact-root", "artifact_roots", multiple=True, metavar="DIR",
              type=click.Path(file_okay=False, resolve_path=True, path_type=Path),
              help="directory file:// artifacts may be deployed from (repeatable); none: every file:// "
                   "artifact is refused (nex devrun and nex apply upload to the Object Store)")
@click.option("--admin-issuer", "admin_issuers", multiple=True, metavar="A...",
              help="account nkey that may also stop any workload (repeatable)")
@click.option("--auth/--no-auth", "auth", default=None,
              help="start the embedded nats-server in operator (JWT) mode: the node keeps the keys in "
                   "its state dir and gives each workload its own scoped credentials [default: off]")
@click.option("--account-seed", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="with --server on an operator-mode server: seed of the account (or of a signing key "
                   "of it) to mint workload credentials with")
@click.option("--account", default=None, metavar="A...",
              help="the account's public key, when --account-seed is a signing key")
@click.option("--replicas", type=click.IntRange(1, 5), default=None,
              help="JetStream replicas of the streams and buckets the node creates "
                   "[default: min(3, the servers of the JetStream cluster)]")
@click.option("--no-reconciler", "reconciler", flag_value=False, default=None,
              help="never act as the fleet's reconciler")
@click.option("--cold-agents", "warm_agents", flag_value=False, default=None,
              help="start each function agent with its first function, not with the node")
@click.option("--fleet-keys", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="directory of the fleet's issuer and xkey, the same on every node that may reconcile")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="serve Prometheus metrics on http://HOST:PORT/metrics [default: off]")
@click.option("--metrics-host", default=None, metavar="HOST",
              help="address the metrics endpoint binds [default: 127.0.0.1]")
@click.option("--otel-endpoint", default=None, metavar="URL",
              help="OTLP/HTTP endpoint for the spans of function invocations "
                   "[default: $OTEL_EXPORTER_OTLP_ENDPOINT, else no export]")
@click.option("--live-call-events", "live_call_events", flag_value=True, default=None,
              help="publish a function_invoked event per successful call, on a subject no stream keeps "
                   "(for nex events -f and tracing; it costs the calls about a tenth of their time)")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@with_global_options
def node_up(opts: GlobalOptions, config_path: Path | None, tags: str | None, log_level: str,
            trusted_issuers: tuple[str, ...], admin_issuers: tuple[str, ...], artifact_roots: tuple[Path, ...],
            **flags: object) -> None:
    """Run a node: take workloads over NATS until SIGINT or SIGTERM.

    With no --server (and no NATS_URL) the node starts an embedded nats-server
    with JetStream on 127.0.0.1 and says where.
    """
    from nex.node.feeds import StreamConflict
    from nex.node.metrics import MetricsEndpointError
    from nex.gctune import tune_for_service
    from nex.node.node import Node

    logging.basicConfig(
        level=log_level.upper(), format="%(message)s", datefmt="%H:%M:%S",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    try:
        overrides = dict(flags)
        overrides.update(server=opts.server, creds=opts.creds, user=opts.user, password=opts.password,
                         nkey=opts.nkey, tls_cert=opts.tls_cert, tls_key=opts.tls_key, tls_ca=opts.tls_ca)
        overrides["tags"] = parse_tags(tags) if tags else None
        overrides["trusted_issuers"] = list(trusted_issuers) or None
        overrides["admin_issuers"] = list(admin_issuers) or None
        overrides["artifact_roots"] = list(artifact_roots) or None
        config = load_config(config_path, overrides)
        tune_for_service()
        asyncio.run(Node(config).run())
    except StateDirInUse as exc:
        print_error(str(exc), another_node_hint(config.server is None))
        sys.exit(1)
    except (NoServersError, NoNatsServer) as exc:
        problem = exc.problem if isinstance(exc, NoNatsServer) else "no server answered"
        print_error(NatsUnavailable(str(config.server), problem).message, NODE_SERVER_HINT)
        sys.exit(1)
    except PortTaken as exc:
        print_error(str(exc), port_taken_hint(exc))
        sys.exit(1)
    except (ConfigError, NatsServerError, SandboxUnavailable, MetricsEndpointError, StreamConflict, OSError,
            asyncio.TimeoutError) as exc:
        print_error(describe_error(exc) or str(exc) or type(exc).__name__)
        sys.exit(1)


NODE_SERVER_HINT = ("Is a NATS server with JetStream running there? Without --server (and NATS_URL) the node "
                    "starts its own.")


def another_node_hint(embedded: bool) -> str:
    """How to start a second node on this host: a state dir of its own (and, with an embedded
    nats-server, a port of its own)."""
    flags = "--state-dir DIR --port PORT" if embedded else "--state-dir DIR"
    return (f"Each node needs a state dir of its own. To start another node on this host: "
            f"nex node up {flags} (or make run ARGS=\"{flags}\").")


def port_taken_hint(taken: PortTaken) -> str:
    """How to start the node's embedded nats-server on a port that is free."""
    free = next_free_port(taken.host, taken.port)
    return (f"Start the node on a free port: nex node up --port {free} (or make run ARGS=\"--port {free}\"); "
            f"commands then connect to it with --server nats://{taken.host}:{free}.")
