"""A JetStream KV bucket that every node may be the first to need.

Shared by the node's registry and the fleet's buckets (leases, shared keys), which sit in
layers that do not import each other.
"""

from __future__ import annotations

from nats.aio.client import Client
from nats.js.api import KeyValueConfig
from nats.js.errors import BadRequestError, BucketNotFoundError
from nats.js.kv import KeyValue


async def ensure_bucket(nc: Client, config: KeyValueConfig, timeout: float = 5.0) -> KeyValue:
    """The bucket, created if missing; one that exists is left as its operator set it.

    Two nodes may race to create it: the loser of the race (its create refused because the
    stream now exists, possibly with another node's settings) takes the winner's bucket.
    """
    js = nc.jetstream(timeout=timeout)
    try:
        return await js.key_value(config.bucket)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(config)
    except BadRequestError:
        return await js.key_value(config.bucket)
