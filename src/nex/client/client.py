"""The client itself: :class:`NexClient`, every part of the client in one class."""

from __future__ import annotations

from nats.aio.client import Client

from nex.api import subjects
from nex.client.apps import Apps
from nex.client.failures import guard_public_methods
from nex.client.feeds import Feeds
from nex.client.functions import Functions
from nex.placement import sampling
from nex.security.keystore import UserKeys

__all__ = ["NexClient"]


@guard_public_methods
class NexClient(Apps, Feeds, Functions):
    """Everything Nex does, from Python: the nodes and workloads of one namespace, over NATS.

    Get one with :func:`nex.connect` (``async with nex.connect() as client:``), or wrap a
    connected nats-py client: ``NexClient(nc, namespace="default")``. Its methods come in parts:

    - nodes and workloads: :meth:`ping`, :meth:`node_info`, :meth:`workloads`,
      :meth:`workload_info`, :meth:`deploy`, :meth:`undeploy`, :meth:`lameduck`, and
      :meth:`resolve_workload` / :meth:`resolve_node` (a name or id prefix to an id);
    - placement: :meth:`auction`, :meth:`place` (deploy through the best bid);
    - artifacts: :meth:`upload_artifact`, :meth:`devrun` (a local file or an image, uploaded and
      deployed);
    - functions: :meth:`invoke`, :meth:`invoke_async`, :meth:`dlq_list`, :meth:`dlq_replay`;
    - feeds: :meth:`logs`, :meth:`events`;
    - apps: :meth:`apply_app`, :meth:`apps`, :meth:`app_status`, :meth:`app_spec`, :meth:`wait_app`,
      :meth:`delete_app`.

    Every failure is a :class:`nex.api.errors.NexError` (docs/python.md lists them): what a part
    does not convert itself, :mod:`nex.client.failures` does.

    With ``keys`` every control request that changes something (DEPLOY, UNDEPLOY,
    LAMEDUCK) and every AUCTION carries a claim signed by ``keys.issuer`` in its
    ``Nex-Claim`` header, bound to its subject and body, and a deploy's env travels
    sealed to the target node's xkey (docs/security.md).
    """

    def __init__(self, nc: Client, namespace: str = subjects.DEFAULT_NAMESPACE, timeout: float = 5.0,
                 keys: UserKeys | None = None, confined: bool = False,
                 sample_threshold: int = sampling.SAMPLE_THRESHOLD) -> None:
        super().__init__(nc, namespace, timeout, keys, confined, sample_threshold)
