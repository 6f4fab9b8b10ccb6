"""``nex creds``: NATS credentials for the clients of one namespace, minted on the node's host."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, ObjectStoreConfig, StorageType, StreamConfig, StreamSource

from nex.agent.durable.streams import DLQ_MAX_AGE_S
from nex.api import subjects
from nex.api.errors import NatsUnavailable, NexError, Unavailable
from nex.cli import ErrorExit
from nex.cli.options import GlobalOptions, with_global_options
from nex.connection import ConnectOptions, NoNatsServer, connect
from nex.jsreplicas import nodes_replicas
from nex.security import natsauth

DEFAULT_FEED_BYTES = 64 * 1024 * 1024


@click.command("creds")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="the state dir of a node started with --auth: its account key is in nats/ "
                   "[default: the node's default state dir]")
@click.option("--account-seed", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              metavar="FILE", help="mint with this account seed (or a signing key of it) instead: an external "
                                   "operator-mode server")
@click.option("--account", default=None, metavar="A...", help="the account's public key, when --account-seed "
                                                              "is a signing key")
@click.option("--name", "user_name", default=None, help="the user's name in its JWT [default: nex client NS]")
@click.option("--subject", "extra_subjects", multiple=True, metavar="SUBJECT",
              help="another subject the clients may publish and subscribe to (repeatable), for functions "
                   "triggered outside nex.NS.>; never a reserved subject or another namespace's")
@click.option("--kv", "kv_buckets", multiple=True, metavar="BUCKET",
              help="a KV bucket of the namespace's functions (nex.kv(BUCKET)) the clients may read and write "
                   "(repeatable)")
@click.option("--no-buckets", "make_buckets", flag_value=False, default=True,
              help="do not create the namespace's artifact bucket and NEX_APPS (creating them needs a "
                   "connection with the node's own creds)")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the creds file here (mode 0600) [default: stdout]")
@with_global_options
def creds(opts: GlobalOptions, state_dir: Path | None, account_seed: Path | None, account: str | None,
          user_name: str | None, extra_subjects: tuple[str, ...], kv_buckets: tuple[str, ...],
          make_buckets: bool, output: Path | None) -> None:
    """Mint credentials for the clients of namespace -n NS, on a node with NATS auth.

    Its clients can deploy, invoke, read the feeds and buckets of NS, and nothing of another
    namespace (docs/security.md, "Namespace clients"). The namespace's artifact bucket, which
    such a client may not create, is made here, with the node's own creds from the state dir
    (or --creds) on --server.

        nex creds -n shop -o shop.creds
        nex --creds shop.creds -n shop devrun ./hello.js
    """
    from nex.node.config import default_state_dir

    namespace = opts.namespace
    try:
        if account_seed is not None:
            signer = natsauth.AccountSigner.from_seed_file(account_seed, account)
        else:
            directory = (state_dir or default_state_dir()) / natsauth.AUTH_DIR
            seed = directory / "account.nk"
            if not seed.is_file():
                raise ErrorExit(f"no account key {seed}: start the node with --auth first, or give --account-seed")
            signer = natsauth.AccountSigner.from_seed_file(seed)
        text = natsauth.mint_client(signer, namespace, user_name, list(extra_subjects), list(kv_buckets))
    except ValueError as exc:
        raise ErrorExit(str(exc)) from None
    if make_buckets:
        node_creds = opts.creds
        if node_creds is None and account_seed is None:
            candidate = (state_dir or default_state_dir()) / natsauth.AUTH_DIR / "node.creds"
            node_creds = str(candidate) if candidate.is_file() else None
        try:
            asyncio.run(make_namespace_buckets(
                ConnectOptions.from_url(opts.server, creds=node_creds, name="nex-creds"), namespace, opts.timeout))
        except NexError as exc:
            click.echo(f"nex: warning: the bucket {subjects.artifact_bucket(namespace)} was not made (make it before"
                       f" the namespace's clients upload files: nats object add): {exc.message}", err=True)
    if output is None:
        sys.stdout.write(text)
        return
    natsauth.write_private(output, text)
    click.echo(f"wrote {output}: credentials of namespace {namespace}", err=True)


async def make_namespace_buckets(options: ConnectOptions, namespace: str, timeout: float) -> None:
    """The namespace's artifact bucket, its copies of the feeds and dead letters, and NEX_APPS,
    which its clients cannot create."""
    from nex.client.appstore import AppStore

    where = ",".join(options.servers)
    try:
        # Not max_reconnect_attempts=0: nats-py reads it as "try for ever" on a server that is not there.
        nc = await connect(options, connect_attempts=1, fail_fast=True)
    except NoNatsServer as exc:
        raise NatsUnavailable(where, exc.problem) from None
    except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
        raise NatsUnavailable(where, str(exc) or type(exc).__name__) from None
    try:
        js = nc.jetstream(timeout=timeout)
        bucket = subjects.artifact_bucket(namespace)
        replicas = await nodes_replicas(js)
        try:
            await js.object_store(bucket)
        except nats.js.errors.BucketNotFoundError:
            await js.create_object_store(bucket, config=ObjectStoreConfig(bucket=bucket, replicas=replicas))
        await AppStore(nc, replicas=replicas, timeout=timeout).ensure()
        await ensure_feed_stream(js, namespace, replicas)
    except (nats.errors.Error, asyncio.TimeoutError) as exc:
        raise Unavailable(f"cannot create the bucket {subjects.artifact_bucket(namespace)}: "
                          f"{exc or type(exc).__name__}") from None
    finally:
        await nc.close()


FEED_SOURCES = (subjects.LOGS_STREAM, subjects.EVENTS_STREAM, subjects.AUDIT_STREAM)


async def _add_missing_sources(js: JetStreamContext, existing: StreamConfig, wanted: list[StreamSource]) -> None:
    have = {source.name for source in existing.sources or []}
    missing = [source for source in wanted if source.name not in have]
    if not missing or not have:
        return  # complete, or not a copy of ours
    existing.sources = [*(existing.sources or []), *missing]
    await js.update_stream(existing)


async def ensure_feed_stream(js: JetStreamContext, namespace: str, replicas: int = 1) -> None:
    """The namespace's copy of its kept feeds (:func:`nex.api.subjects.feed_stream`), sourced from
    NEX_LOGS, NEX_EVENTS and NEX_AUDIT, bounded like them, and of its dead letters
    (:func:`nex.api.subjects.dead_letter_stream`), sourced from NEX_DLQ; existing ones are left,
    but for a feed copy made before NEX_AUDIT, which gains it as a source."""
    feed = f"{subjects.FEED_PREFIX}.{namespace}.>"
    bound = 0
    for source in FEED_SOURCES:
        try:
            bound += max(0, (await js.stream_info(source)).config.max_bytes or 0)
        except nats.js.errors.NotFoundError:
            pass  # no node has made it yet: the copy starts when it appears
    await _ensure_copy(js, StreamConfig(
        name=subjects.feed_stream(namespace),
        sources=[StreamSource(name=s, filter_subject=feed) for s in FEED_SOURCES],
        max_bytes=bound or DEFAULT_FEED_BYTES, discard=DiscardPolicy.OLD, storage=StorageType.FILE,
        allow_direct=True, num_replicas=replicas, description=f"nex: the kept feeds of namespace {namespace}"))
    await _ensure_copy(js, StreamConfig(
        name=subjects.dead_letter_stream(namespace),
        sources=[StreamSource(name=subjects.DLQ_STREAM, filter_subject=f"{subjects.DLQ_PREFIX}.{namespace}.>")],
        max_age=DLQ_MAX_AGE_S, storage=StorageType.FILE, allow_direct=True, num_replicas=replicas,
        description=f"nex: the dead letters of namespace {namespace}"))


async def _ensure_copy(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        info = await js.stream_info(config.name)
    except nats.js.errors.NotFoundError:
        pass
    else:
        await _add_missing_sources(js, info.config, config.sources or [])
        return
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.stream_info(config.name)  # made meanwhile
