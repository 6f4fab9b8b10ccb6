"""The global options, accepted before or after the subcommand.

The root group reads them (with environment defaults) into a :class:`GlobalOptions`
in ``ctx.obj``; :func:`with_global_options` adds the same options, without
defaults, to a command and merges: a value given after the subcommand wins.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from dataclasses import dataclass
from typing import Any, Callable

import click

from nex.api.subjects import DEFAULT_NAMESPACE
from nex.connection import ConnectOptions

DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class GlobalOptions:
    server: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    creds: str | None = None
    user: str | None = None
    password: str | None = None
    nkey: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    json: bool = False

    def merged(self, overrides: dict[str, Any]) -> GlobalOptions:
        """These options with every value given in ``overrides`` (None means not given)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if not given.get("json"):
            given.pop("json", None)  # a flag given on either side stays on
        return dataclasses.replace(self, **given)

    def connect_options(self) -> ConnectOptions:
        """Raises ValueError for options that do not go together."""
        return ConnectOptions.from_url(
            self.server, creds=self.creds, user=self.user, password=self.password,
            nkey_seed_file=self.nkey, tls_cert=self.tls_cert, tls_key=self.tls_key,
            tls_ca=self.tls_ca, name="nex-cli",
        )


def positive(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A click callback: the value, when given, must be above zero."""
    if value is not None and value <= 0:
        raise click.BadParameter(f"{value:g} is not above zero")
    return value


class GlobalOption(click.Option):
    """Marks an option as global, so help lists it apart from the command's own."""


_FIELDS = [f.name for f in dataclasses.fields(GlobalOptions)]


def _global_params(root: bool) -> list[click.Option]:
    """The global options; on the root group with defaults, on commands without."""

    def opt(*decls: str, help: str, envvar: str | None = None, default: Any = None, **kw: Any) -> click.Option:
        if root:
            kw.update(envvar=envvar, show_envvar=envvar is not None, default=default)
        return GlobalOption(list(decls), help=help, **kw)

    path = click.Path(exists=True, dir_okay=False)
    return [
        opt("--server", "-s", metavar="URL", envvar="NATS_URL",
            help="NATS server URL(s), comma-separated [default: nats://127.0.0.1:4222]"),
        opt("--namespace", "-n", metavar="NS", envvar="NEX_NAMESPACE", default=DEFAULT_NAMESPACE,
            help=f"Nex namespace [default: {DEFAULT_NAMESPACE}]"),
        opt("--creds", type=path, help="NATS credentials file"),
        opt("--user", help="NATS user name"),
        opt("--password", help="NATS password"),
        opt("--nkey", type=path, metavar="SEEDFILE", help="NATS nkey seed file"),
        opt("--tls-cert", type=path, help="client certificate for TLS"),
        opt("--tls-key", type=path, help="client key for TLS"),
        opt("--tls-ca", type=path, help="CA certificates for TLS"),
        opt("--timeout", type=float, callback=positive, metavar="SECONDS",
            default=DEFAULT_TIMEOUT_S, help=f"request timeout [default: {DEFAULT_TIMEOUT_S:g}]"),
        opt("--json", "json_", is_flag=True, default=False, help="print JSON instead of tables"),
    ]


def root_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """For the root group: the callback receives a ``GlobalOptions`` as ``opts``."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(_param_name(name)) for name in _FIELDS}
        return f(*args, opts=GlobalOptions(**values), **kwargs)

    return _attach(wrapper, root=True)


def with_global_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """For a command: ``f(opts, ...)`` gets the root group's options merged with its own."""
    return global_options_except()(f)


def global_options_except(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Like :func:`with_global_options`, for a command that uses some option names itself
    (``devrun --timeout`` is the function's timeout); those global options then go before the command."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            local = {name: kwargs.pop(_param_name(name)) for name in _FIELDS if name not in names}
            ctx = click.get_current_context()
            base = ctx.find_object(GlobalOptions) or GlobalOptions()
            return f(base.merged(local), *args, **kwargs)

        return _attach(wrapper, root=False, exclude=frozenset(names))

    return decorate


def _param_name(field: str) -> str:
    return "json_" if field == "json" else field


def _attach(f: Callable[..., Any], root: bool, exclude: frozenset[str] = frozenset()) -> Callable[..., Any]:
    params = getattr(f, "__click_params__", [])
    # click lists params in reverse order of decoration.
    params.extend(reversed([p for p in _global_params(root) if p.name not in exclude]))
    f.__click_params__ = params  # type: ignore[attr-defined]
    return f


class NexCommand(click.Command):
    """A command whose help lists the global options after its own."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _format_split_options(self, ctx, formatter)


class NexGroupHelp(click.Group):
    """A group whose help lists the global options after its own (see :class:`NexCommand`), and
    which answers an unknown command with the commands it may have meant."""

    command_class = NexCommand

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _format_split_options(self, ctx, formatter)
        self.format_commands(ctx, formatter)

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        # click suggests only among the commands loaded so far, and the root group loads them lazily.
        name = args[0]
        if not ctx.resilient_parsing and not name.startswith("-") and self.get_command(ctx, name) is None:
            ctx.fail(unknown_command(name, self.list_commands(ctx)))
        return super().resolve_command(ctx, args)


def unknown_command(name: str, commands: list[str]) -> str:
    """The usage error of an unknown command, with up to three ``commands`` it may have meant: those
    that start with ``name``, then those that are close to it (``nod``: ``node``)."""
    close = [c for c in commands if c.startswith(name)] + difflib.get_close_matches(name, commands, n=3, cutoff=0.6)
    meant = list(dict.fromkeys(close))[:3]
    message = f"No such command {name!r}."
    if len(meant) == 1:
        return f"{message} Did you mean {meant[0]!r}?"
    if meant:
        return f"{message} Did you mean one of {', '.join(repr(c) for c in meant)}?"
    return message


NexGroupHelp.group_class = NexGroupHelp


def _format_split_options(cmd: click.Command, ctx: click.Context, formatter: click.HelpFormatter) -> None:
    own, common = [], []
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)
        if isinstance(param, click.Option) and record is not None:
            (common if isinstance(param, GlobalOption) else own).append(record)
    if own:
        with formatter.section("Options"):
            formatter.write_dl(own)
    if common:
        with formatter.section("Global options (before or after the command)"):
            formatter.write_dl(common)
