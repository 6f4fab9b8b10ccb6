"""The fleet's keys, shared through JetStream, for a fleet started without ``fleet_keys`` (dev mode).

The reconciler signs deploys with the fleet issuer and opens app env with the fleet
xkey, so every node that may reconcile needs the same keys. Given no ``fleet_keys``
directory, nodes share them in the KV bucket NEX_FLEET (written by nodes only):

- ``fleet``: which keys the fleet has (:class:`~nex.api.apps.FleetKeysRecord`), written
  once, create-only, by the first node that stands for the lease. It offers the keys of
  its own ``<state dir>/fleet``; a node that loses that race takes the winner's.
- ``node.<node id>``: the two seeds sealed to that node's xkey by the fleet xkey
  (:class:`~nex.api.apps.FleetKeysCopy`). The reconciler seals one for each registered
  node that has none, every pass, so any of them can take the lease over.

A copy opens only with the node's private xkey and the fleet's public xkey, and is taken
only when the seeds it holds are the keys of the ``fleet`` record: a forged copy (whoever
wrote it without the fleet xkey) does not open. A node without a copy does not stand for
the lease: it could open no env and its deploys would own replicas nobody else may stop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timezone

import nats.js.errors
import nkeys
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue
from pydantic import ValidationError

from nex.api import subjects
from nex.api.apps import FleetKeysCopy, FleetKeysRecord
from nex.api.errors import SealedEnvError
from nex.api.records import NodeRecord
from nex.kvbucket import ensure_bucket
from nex.kvwatch import watched_keys
from nex.security.keystore import UserKeys
from nex.security.xkeys import XKey

log = logging.getLogger(__name__)

FLEET_KEY = "fleet"


def copy_key(node_id: str) -> str:
    return f"node.{node_id}"


def seal_copy(keys: UserKeys, recipient: str) -> FleetKeysCopy:
    """The fleet's seeds sealed to ``recipient`` (a node's public xkey) by the fleet xkey."""
    seeds = json.dumps({"issuer_seed": keys.issuer.seed.decode(), "xkey_seed": keys.xkey.seed()}).encode()
    return FleetKeysCopy(recipient=recipient, sealed=base64.b64encode(keys.xkey.seal(seeds, recipient)).decode())


def open_copy(copy: FleetKeysCopy, fleet: FleetKeysRecord, node_xkey: XKey) -> UserKeys:
    """The fleet's keys from ``copy``; raises SealedEnvError unless it opens to the keys ``fleet`` names."""
    try:
        plain = json.loads(node_xkey.open(base64.b64decode(copy.sealed, validate=True), fleet.xkey))
        keys = UserKeys(nkeys.from_seed(plain["issuer_seed"].encode()), XKey.from_seed(plain["xkey_seed"]))
    except (binascii.Error, ValueError, KeyError, TypeError, nkeys.NkeysError) as exc:  # ValueError: KeyDecodeError
        raise SealedEnvError(f"the fleet keys' copy is not readable: {type(exc).__name__}") from None
    if (keys.issuer_public, keys.xkey.public) != (fleet.issuer, fleet.xkey):
        raise SealedEnvError("the fleet keys' copy holds other keys than the fleet record names")
    return keys


class SharedFleetKeys:
    """This node's access to the fleet keys in NEX_FLEET."""

    def __init__(self, nc: Client, node_id: str, node_xkey: XKey, offer: Callable[[], UserKeys], *,
                 replicas: int = 1, timeout: float = 5.0) -> None:
        self._nc = nc
        self._node_id = node_id
        self._node_xkey = node_xkey
        self._offer = offer  # the keys this node proposes when the fleet has none yet
        self._replicas = replicas
        self._timeout = timeout
        self._kv: KeyValue | None = None
        self._sealed_for: dict[str, str] | None = None  # node id -> the xkey its copy is sealed to
        self._waiting_said = False

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            config = KeyValueConfig(bucket=subjects.FLEET_BUCKET, history=1, replicas=self._replicas,
                                    storage=StorageType.FILE,
                                    description="Nex: the fleet's keys, sealed to each node (nodes only)")
            self._kv = await ensure_bucket(self._nc, config, timeout=self._timeout)
        return self._kv

    async def load(self) -> UserKeys | None:
        """The fleet's keys: this node's copy opened, or its own made the fleet's when the fleet has
        none yet. None while no copy is sealed to this node (it waits for the reconciler to seal one)."""
        kv = await self._bucket()
        fleet = await self._get(kv, FLEET_KEY, FleetKeysRecord)
        if fleet is None:
            keys = self._offer()
            record = FleetKeysRecord(issuer=keys.issuer_public, xkey=keys.xkey.public, created_by=self._node_id,
                                     created_at=datetime.now(timezone.utc))
            try:
                await asyncio.wait_for(kv.create(FLEET_KEY, record.model_dump_json().encode()), self._timeout)
            except nats.js.errors.KeyWrongLastSequenceError:
                return await self.load()  # another node made the fleet's keys first: theirs
            await self._put_copy(kv, keys, self._node_id, self._node_xkey.public)
            log.info("this node made the fleet's keys (issuer %s, xkey %s), shared in %s", keys.issuer_public,
                     keys.xkey.public, subjects.FLEET_BUCKET)
            return keys
        copy = await self._get(kv, copy_key(self._node_id), FleetKeysCopy)
        if copy is None and fleet.created_by == self._node_id:
            # This node made the fleet's keys but its own copy was not written (JetStream away
            # just then): its own keys are still at hand, and no other node may have them yet.
            keys = self._offer()
            if (keys.issuer_public, keys.xkey.public) == (fleet.issuer, fleet.xkey):
                await self._put_copy(kv, keys, self._node_id, self._node_xkey.public)
                return keys
        if copy is None:
            if not self._waiting_said:
                log.info("not standing for the reconciler lease until the reconciler seals this node a copy "
                         "of the fleet's keys (%s)", subjects.FLEET_BUCKET)
                self._waiting_said = True
            return None
        try:
            keys = open_copy(copy, fleet, self._node_xkey)
        except SealedEnvError as exc:
            log.warning("not standing for the reconciler lease: %s", exc)
            return None
        log.info("loaded the fleet's keys (issuer %s) from this node's copy in %s", fleet.issuer,
                 subjects.FLEET_BUCKET)
        return keys

    async def share(self, keys: UserKeys, nodes: Iterable[NodeRecord]) -> int:
        """Seal a copy for each node that has none (or one sealed to an xkey it no longer has); the
        number sealed. Cheap once every node has one: the copies are listed once a term."""
        kv = await self._bucket()
        if self._sealed_for is None:
            found = await watched_keys(kv, "node.>")
            self._sealed_for = {key.removeprefix("node."): "" for key in found}
        sealed = 0
        for record in nodes:
            node = record.node
            if node.xkey is None or self._sealed_for.get(node.node_id) in ("", node.xkey):
                continue  # "": a copy made in an earlier term, to the xkey the node had then (its id's)
            await self._put_copy(kv, keys, node.node_id, node.xkey)
            sealed += 1
        return sealed

    def forget(self) -> None:
        """A new term lists the copies again."""
        self._sealed_for = None

    async def _put_copy(self, kv: KeyValue, keys: UserKeys, node_id: str, recipient: str) -> None:
        copy = seal_copy(keys, recipient)
        await asyncio.wait_for(kv.put(copy_key(node_id), copy.model_dump_json().encode()), self._timeout)
        if self._sealed_for is not None:
            self._sealed_for[node_id] = recipient

    async def _get(self, kv: KeyValue, key: str, model):
        try:
            entry = await asyncio.wait_for(kv.get(key), self._timeout)
        except nats.js.errors.KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        try:
            return model.model_validate_json(entry.value)
        except ValidationError:
            log.warning("%s %s is not a %s: ignored", subjects.FLEET_BUCKET, key, model.__name__)
            return None
