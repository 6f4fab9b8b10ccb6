"""How many copies JetStream keeps of the streams and buckets Nex creates.

A node decides once, at start (:func:`fleet_replicas`), and passes the number to
everything that creates a stream or bucket. Unset, it is min(3, the number of servers
in the JetStream cluster that answers the node's account): 1 on a single server, 3 on a
cluster of three or more, the hub's cluster for a node behind a leaf server that uses
the hub's JetStream, the leaf's own for one that has its own JetStream domain.

JetStream tells a normal user no cluster size (``$JS.API.INFO`` has none, the meta
group's API needs the system account, and a server's INFO lists client URLs, JetStream
or not). What it does tell is whether it can place a stream of N replicas: the node
creates a probe stream of 3 replicas, then 2, and deletes it at once. That also answers
for an account whose limits allow fewer replicas.

The CLI and the client, which create a few buckets too, take the number the nodes chose
(that of NEX_NODES, :func:`nodes_replicas`), so that ``--replicas 1`` on the nodes is
followed by them too.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js.api import StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from nex.api import subjects
from nex.connection import while_jetstream_wakes

log = logging.getLogger(__name__)

__all__ = ["MOST_BY_DEFAULT", "cluster_replicas", "fewer_replicas", "fleet_replicas", "is_nex_stream",
           "nodes_replicas", "warn_fewer_replicas"]

MOST_BY_DEFAULT = 3
PROBE_PREFIX = "NEX_REPLICAS_PROBE"
_NOT_CLUSTERED = 10074  # "replicas > 1 not supported in non-clustered mode"
# The names of the streams behind what Nex creates: its streams, its KV buckets (KV_<bucket>:
# NEX_NODES..., the functions' NEXKV_...), object stores (OBJ_<bucket>: NEXCLIFILES...,
# NEXOBJ_...), a namespace's copies and the functions' streams.
_NEX_STREAM_PREFIXES = ("NEX_", "KV_NEX", "OBJ_NEX", f"{subjects.FEED_STREAM_PREFIX}_",
                        f"{subjects.FUNCTION_STREAM_PREFIX}_", f"{subjects.DLQ_COPY_PREFIX}_")


async def fleet_replicas(nc: Client, configured: int | None, patience_s: float = 60.0) -> int:
    """``configured`` if given, else :func:`cluster_replicas`, waiting out a JetStream that does
    not answer yet (a cluster still electing its leaders) for up to ``patience_s``."""
    if configured is not None:
        return configured
    js = nc.jetstream(timeout=5.0)
    return await while_jetstream_wakes(lambda: cluster_replicas(js), patience_s)


async def cluster_replicas(js: JetStreamContext) -> int:
    """min(3, the replicas JetStream can give a stream of this account), found with a probe
    stream that is deleted at once. On a cluster with a server down for long, that is fewer
    than the cluster's size: no stream of more could be created then."""
    for wanted in range(MOST_BY_DEFAULT, 1, -1):
        name = f"{PROBE_PREFIX}_{secrets.token_hex(8).upper()}"
        try:
            await js.add_stream(StreamConfig(
                name=name, subjects=[f"$NEX.PROBE.{name}"], storage=StorageType.FILE, num_replicas=wanted,
                max_msgs=1, max_bytes=1024, description="nex: how many replicas JetStream can give; deleted at once"))
        except ServiceUnavailableError:
            raise  # no answer yet: not an answer about replicas
        except APIError as exc:
            if exc.err_code == _NOT_CLUSTERED:
                return 1
            log.debug("JetStream cannot place %d replicas: %s", wanted, exc.description)
            continue
        try:
            await js.delete_stream(name)
        except NotFoundError:
            pass
        return wanted  # the meta leader placed that many peers, or it would have refused
    return 1


async def nodes_replicas(js: JetStreamContext) -> int:
    """For the CLI and the client: the replicas the nodes gave NEX_NODES, else (no node ran yet)
    :func:`cluster_replicas`; 1 when neither can be read (credentials that may not create
    streams, say: those will not create the bucket either)."""
    try:
        info = await js.stream_info(f"KV_{subjects.NODES_BUCKET}")
        return info.config.num_replicas or 1
    except NotFoundError:
        pass
    except (NatsError, asyncio.TimeoutError):
        return 1
    try:
        return await cluster_replicas(js)
    except (NatsError, asyncio.TimeoutError):
        return 1


def is_nex_stream(name: str) -> bool:
    return name.startswith(_NEX_STREAM_PREFIXES) and not name.startswith(PROBE_PREFIX)


async def fewer_replicas(js: JetStreamContext, replicas: int) -> dict[str, int]:
    """Nex's existing streams (and the streams of its buckets) with fewer than ``replicas``
    replicas: name -> their replicas."""
    fewer: dict[str, int] = {}
    offset = 0
    for _ in range(10_000):  # pages of up to 256 streams
        page = await js.streams_info_iterator(offset)
        streams = list(page) if page.streams else []
        for info in streams:
            name = info.config.name or ""
            if is_nex_stream(name) and (info.config.num_replicas or 1) < replicas:
                fewer[name] = info.config.num_replicas or 1
        offset += len(streams)
        if not streams or offset >= page.total:
            break
    return fewer


async def warn_fewer_replicas(js: JetStreamContext, replicas: int) -> dict[str, int]:
    """Log, once, each of Nex's streams with fewer replicas than ``replicas`` and how to fix it;
    the node changes none (moving a stream's data is its operator's call)."""
    try:
        fewer = await fewer_replicas(js, replicas)
    except (NatsError, asyncio.TimeoutError, NoRespondersError) as exc:
        log.warning("could not list the JetStream streams to compare their replicas: %s", exc or type(exc).__name__)
        return {}
    for name, has in sorted(fewer.items()):
        log.warning("JetStream stream %s has %d replica%s, fewer than the %d this node gives what it creates; "
                    "the node leaves it as it is. To fix it: nats stream edit %s --replicas %d",
                    name, has, "" if has == 1 else "s", replicas, name, replicas)
    return fewer
