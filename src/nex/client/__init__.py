"""The async Python client of Nex; the ``nex`` command is a thin shell over it.

Start with :func:`connect` (also ``nex.connect``), an async context manager that yields a
:class:`NexClient`::

    async with nex.connect() as client:
        print(await client.invoke("demo.hello", b"world"))

:class:`NexClient` is made of one class per part, each in its own module: ``transport`` (the
connection, requests, scatter-gather, claims, errors), ``workloads`` (nodes and workloads),
``placement`` (auctions and deploys through bids, with ``registry``, its read of NEX_NODES),
``artifacts`` (uploads and devrun, a Python file built first with
``nex.pyfunc``), ``feeds`` (logs and events), ``functions`` (calls, async
invocations, dead letters) and ``apps`` (desired state: ``appfile``, ``appstore``,
``appstatus``). Each part builds on the ones it uses (``Placement`` on ``Workloads``,
everything on ``Transport``).

Every failure surfaces as a :class:`nex.api.errors.NexError`: an error reply from a
node, a subject nobody answers (``NodeNotFound``, ``WorkloadNotFound``), a request
that times out or a NATS server that cannot be reached (``Unavailable``).
"""

from __future__ import annotations

from nex.client.appfile import AppFileError
from nex.client.apps import DEFAULT_APP_WAIT_S
from nex.client.appstatus import AppChange, AppView, ReplicaView, WorkloadChange, WorkloadView
from nex.client.artifacts import Progress
from nex.client.client import NexClient
from nex.client.feeds import FeedMessage, LogLine
from nex.client.functions import AsyncReceipt
from nex.client.placement import REGISTRY_MAX_AGE_S, constraints_of
from nex.client.session import HOME_KEYS, connect
from nex.client.transport import DEFAULT_GATHER_S
from nex.localfiles import guess_type, workload_name_for
from nex.placement.scoring import SCORE_TIE, WORKLOAD_POINTS, rank_bids
from nex.security.keystore import UserKeys

__all__ = [
    "AppChange", "AppFileError", "AppView", "AsyncReceipt", "HOME_KEYS", "LogLine", "NexClient", "Progress",
    "ReplicaView", "UserKeys", "WorkloadChange", "WorkloadView", "connect", "constraints_of", "guess_type",
    "rank_bids", "workload_name_for",
    # also importable from here, as before the client was a package
    "DEFAULT_APP_WAIT_S", "DEFAULT_GATHER_S", "FeedMessage", "REGISTRY_MAX_AGE_S", "SCORE_TIE", "WORKLOAD_POINTS",
]
