"""Fleet-wide replay memory: a claim is accepted once, by one node, in the whole fleet.

Each accepted claim's ``jti`` is written to the JetStream KV bucket ``NEX_CLAIMS``
with a create-only write before the node acts on it. A second node (or the same
node after a restart) that gets the same claim finds the key and refuses it. The
bucket's TTL outlives every claim (the longest lifetime plus the clock skew on
both sides), so the memory costs what the claims of the last day take.
"""

from __future__ import annotations

import json

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from nex.api import claims, subjects
from nex.api.claims import Claim
from nex.api.errors import ClaimReplayed, Unavailable

TTL_S = claims.MAX_LIFETIME_S + 4 * claims.CLOCK_SKEW_S


class ClaimLedger:
    """The used claim ids of the fleet, in ``NEX_CLAIMS``."""

    def __init__(self, nc: Client, node_id: str, replicas: int = 1, timeout: float = 5.0) -> None:
        self._js = nc.jetstream(timeout=timeout)
        self._node_id = node_id
        self._replicas = replicas
        self._kv: KeyValue | None = None

    async def ensure(self) -> None:
        """Open the bucket, creating it when missing (an existing one is left as it is)."""
        try:
            self._kv = await self._js.key_value(subjects.CLAIMS_BUCKET)
            return
        except nats.js.errors.BucketNotFoundError:
            pass
        config = KeyValueConfig(bucket=subjects.CLAIMS_BUCKET, history=1, ttl=TTL_S, replicas=self._replicas,
                                storage=StorageType.FILE, description="Nex: ids of used claims (replay protection)")
        try:
            self._kv = await self._js.create_key_value(config)
        except nats.js.errors.BadRequestError:
            self._kv = await self._js.key_value(subjects.CLAIMS_BUCKET)  # another node made it meanwhile

    async def use(self, claim: Claim) -> None:
        """Record ``claim`` as used; ClaimReplayed when it already was, anywhere in the fleet."""
        if self._kv is None:
            await self.ensure()
        record = json.dumps({"iss": claim.iss, "sub": claim.sub, "exp": claim.exp, "node": self._node_id})
        try:
            await self._kv.create(claim.jti, record.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            raise ClaimReplayed(claim.jti) from None
        except (nats.errors.Error, TimeoutError) as exc:
            # Fail closed: a claim whose use cannot be recorded could be used again elsewhere.
            raise Unavailable(f"cannot record the claim's use in {subjects.CLAIMS_BUCKET}: "
                              f"{type(exc).__name__}; try again") from None
