"""The async Python client of the control API; the ``nex`` CLI is a thin shell over it.

:class:`NexClient` is the one front door, made of one class per part, each in its own
module: ``transport`` (the connection, requests, scatter-gather, claims, errors),
``workloads`` (nodes and workloads), ``placement`` (auctions and deploys through bids, with
``registry``, its read of NEX_NODES), ``artifacts`` (uploads and devrun, a Python file built
first with ``nex.pyfunc``), ``feeds`` (logs and events) and ``functions`` (calls, async
invocations, dead letters). Each part builds on the
ones it uses (``Placement`` on ``Workloads``, everything on ``Transport``).

Every failure surfaces as a :class:`nex.api.errors.NexError`: an error reply from a
node, a subject nobody answers (``NodeNotFound``, ``WorkloadNotFound``), a request
that times out or a NATS server that cannot be reached (``Unavailable``).
"""

from __future__ import annotations

from nats.aio.client import Client

from nex.api import subjects
from nex.client.artifacts import Artifacts, Progress
from nex.client.feeds import FeedMessage, Feeds, LogLine
from nex.client.functions import AsyncReceipt, Functions
from nex.client.placement import REGISTRY_MAX_AGE_S, constraints_of
from nex.client.transport import DEFAULT_GATHER_S
from nex.localfiles import guess_type, workload_name_for
from nex.placement import sampling
from nex.placement.scoring import SCORE_TIE, WORKLOAD_POINTS, rank_bids
from nex.security.keystore import UserKeys

__all__ = [
    "AsyncReceipt", "LogLine", "NexClient", "Progress", "constraints_of", "guess_type", "rank_bids", "workload_name_for",
    # also importable from here, as before the client was a package
    "DEFAULT_GATHER_S", "FeedMessage", "REGISTRY_MAX_AGE_S", "SCORE_TIE", "WORKLOAD_POINTS",
]


class NexClient(Artifacts, Feeds, Functions):
    """Requests to the nodes of one namespace over a connected nats-py client.

    With ``keys`` every control request that changes something (DEPLOY, UNDEPLOY,
    LAMEDUCK) and every AUCTION carries a claim signed by ``keys.issuer`` in its
    ``Nex-Claim`` header, bound to its subject and body, and a deploy's env travels
    sealed to the target node's xkey (docs/security.md).
    """

    def __init__(self, nc: Client, namespace: str = subjects.DEFAULT_NAMESPACE, timeout: float = 5.0,
                 keys: UserKeys | None = None, confined: bool = False,
                 sample_threshold: int = sampling.SAMPLE_THRESHOLD) -> None:
        super().__init__(nc, namespace, timeout, keys, confined, sample_threshold)
