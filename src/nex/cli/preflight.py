"""`nex node preflight`: can this host run a node, and sandbox its workloads?"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click
from rich.text import Text

from nex.cli import output
from nex.cli.options import GlobalOptions, NexCommand, with_global_options
from nex.node.config import ConfigError, load_config
from nex.node.preflight import Report, Status, run_checks

_LABELS = {Status.OK: "[ ok ]", Status.WARN: "[warn]", Status.FAIL: "[FAIL]", Status.INFO: "[info]"}
_STYLES = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "bold red", Status.INFO: "cyan"}


@click.command("preflight", cls=NexCommand)
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help="the state dir the node would use [default: as nex node up]")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="the node's TOML or JSON config file (its state dir, sandbox and server count)")
@click.option("--sandbox", type=click.Choice(["auto", "oci", "gvisor", "none"]), default=None,
              help="as for nex node up: with oci or gvisor, exit 1 when this host cannot sandbox so "
                   "[default: auto]")
@with_global_options
def preflight(opts: GlobalOptions, state_dir: Path | None, config_path: Path | None,
              sandbox: str | None) -> None:
    """Check this host for a node and print the command that fixes each problem.

    Checks: the OCI runtime (the node's own sandbox probe), cgroups, namespaces,
    seccomp, the nats-server binary, the state dir, free disk, QuickJS, wasmtime.

    Exits 1 when a check fails: something the node needs is missing (with
    --sandbox oci, a working OCI runtime); warnings leave the exit status 0.
    """
    try:
        config = load_config(config_path, {"state_dir": state_dir, "sandbox": sandbox, "server": opts.server})
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    report = asyncio.run(run_checks(config.state_dir, config.sandbox, embedded_server=config.server is None))
    if opts.json:
        output.print_json(report.to_dict())
    else:
        _print(report)
    if report.failed:
        sys.exit(1)


def _print(report: Report) -> None:
    console = output.stdout()
    width = max(len(c.name) for c in report.checks)
    for check in report.checks:
        console.print(Text.assemble((_LABELS[check.status], _STYLES[check.status]),
                                    f" {check.name.ljust(width)}  {check.detail}"), highlight=False)
        if check.fix and check.status in (Status.WARN, Status.FAIL):
            console.print(f"       {' ' * width}  fix: {check.fix}", markup=False, highlight=False)
    counts = {s: sum(1 for c in report.checks if c.status == s) for s in Status}
    runtime = report.sandbox_runtime
    verdict = (f"native workloads run sandboxed by {runtime}" if runtime else
               "native workloads run as plain processes" if report.sandbox.value not in ("oci", "gvisor") else
               f"the node cannot sandbox and would refuse to start (--sandbox {report.sandbox.value})")
    console.print(f"\n{counts[Status.OK]} ok, {counts[Status.WARN]} warnings, {counts[Status.FAIL]} failed; "
                  f"--sandbox {report.sandbox.value}: {verdict}", markup=False, highlight=False)
