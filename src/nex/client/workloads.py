"""Nodes and workloads: PING, INFO (page by page), LAMEDUCK, DEPLOY, UNDEPLOY, WPING."""

from __future__ import annotations

import asyncio
import re

from nex.api import subjects
from nex.api.errors import BidNotFound, InternalError, NexError, NodeNotFound, NotFound, Unavailable, WorkloadNotFound
from nex.api.models import (
    BID_ID_PATTERN, DEFAULT_STOP_GRACE_S, DeployRequest, LameDuckResponse, NodeInfo, NodePing, NodeState, PageRequest,
    UndeployRequest, UndeployResponse, WorkloadPing, WorkloadSummary, WorkloadType,
)
from nex.client.naming import NODE_ID_LENGTH, resolve_id
from nex.client.transport import DEFAULT_GATHER_S, Transport, target_token
from nex.security.xkeys import seal_env


class Workloads(Transport):
    """The nodes of the namespace, and the workloads on them."""

    # -- nodes -------------------------------------------------------------------------

    async def ping(self, wait: float = DEFAULT_GATHER_S, expected: int | None = None) -> list[NodePing]:
        """Every node that answers within ``wait`` seconds (or as soon as ``expected`` have).

        Never raises for an empty fleet: no node answering is an empty list.

        """
        return await self._gather(subjects.PING, NodePing, wait, expected)

    async def ping_node(self, node_id: str, timeout: float | None = None) -> NodePing:
        """The node's PING; NodeNotFound when nothing listens on its subject (no such node, or
        one whose connection is gone), Unavailable when it does not answer in time."""
        return await self._request(subjects.PING, target_token(node_id, "node id"), NodePing, NodeNotFound,
                                   timeout=timeout)

    async def node_info(self, node_id: str) -> NodeInfo:
        """The node, with every workload of the namespace on it (read page by page).

        Raises:
            NodeNotFound: no node ``node_id`` answers in the namespace.
            Unavailable: no reply within the client's timeout.

        """
        first = await self._request(subjects.INFO, target_token(node_id, "node id"), NodeInfo, NodeNotFound)
        rest = await self._more_pages(node_id, first.next)
        return first.model_copy(update={"workloads": first.workloads + rest, "next": None})

    async def lameduck(self, node_id: str) -> LameDuckResponse:
        """Put the node in lame duck: it stops taking work, and its workloads stop after its lame-duck period.

        Signed with the client's keys; a node that trusts issuers takes it from an admin only.

        Raises:
            NodeNotFound: no node ``node_id`` answers.
            Forbidden: the node refuses the claim (``NotAdmin``, ``UntrustedIssuer``...).

        """
        return await self._request(
            subjects.LAMEDUCK, target_token(node_id, "node id"), LameDuckResponse, NodeNotFound, signed=True,
        )

    async def pick_node(self, type: WorkloadType | str) -> str:
        """The node with the fewest workloads among those that run ``type`` and take work.

        Placement goes by auction (:meth:`place`); this is for a caller that wants a node id
        from PING and INFO alone."""
        type = WorkloadType(type)
        nodes = await self.ping()
        if not nodes:
            raise Unavailable(f"no node is running in namespace {self.namespace!r}")
        taking_work = [n for n in nodes if n.state == NodeState.RUNNING]
        if not taking_work:
            raise Unavailable(f"every node in namespace {self.namespace!r} is in lame duck mode")
        infos = await asyncio.gather(
            *(self.node_info(n.node_id) for n in taking_work), return_exceptions=True
        )
        able: list[NodeInfo] = []
        for info in infos:
            if isinstance(info, NodeNotFound):
                continue  # stopped between the ping and the info request
            if isinstance(info, BaseException):
                raise info
            if type in info.runtimes:
                able.append(info)
        if not able:
            raise Unavailable(f"no node in namespace {self.namespace!r} runs {type.value} workloads")
        return min(able, key=lambda n: n.workload_count).node_id

    # -- workloads ---------------------------------------------------------------------

    async def deploy(self, target: str, request: DeployRequest, xkey: str | None = None,
                     timeout: float | None = None) -> WorkloadSummary:
        """Deploy on ``target``, a node id or the id of a bid the node made in an auction.

        With keys, the request is signed and env sealed to ``xkey`` (the target node's
        key; looked up with a PING when not given). ``timeout`` (default: the client's) is how
        long to wait for the node's reply, which comes once the workload runs.

        Raises:
            NodeNotFound: no node ``target`` answers (BidNotFound: the bid expired or was used).
            BadRequest: the node refuses the request (a field, a trigger, the artifact).
            Forbidden: the node refuses the claim (unsigned, untrusted issuer...).
            Unavailable: no reply within the client's timeout, or the node is draining.

        """
        _deploy_target(target)
        if self.keys is not None and request.env:
            request = await self._sealed(target, request, xkey)
        try:
            return await self._request(
                subjects.DEPLOY, target, WorkloadSummary, _deploy_target_not_found,
                body=request.model_dump_json(exclude_none=True).encode(), timeout=timeout, signed=True,
            )
        except NotFound as exc:
            if "." in target and not isinstance(exc, BidNotFound):  # the node refused the bid
                raise BidNotFound(target) from None
            raise

    async def _sealed(self, target: str, request: DeployRequest, xkey: str | None) -> DeployRequest:
        """The request with its env sealed to the target node's xkey."""
        node_xkey = xkey
        node_id = target.partition(".")[0]  # a bid's id starts with its node's
        if node_xkey is None:
            node_xkey = (await self.ping_node(node_id)).xkey
        if node_xkey is None:
            raise Unavailable(f"node {node_id} publishes no xkey: cannot seal env to it")
        return request.model_copy(update={
            "env": {}, "sealed_env": seal_env(request.env, self.keys.xkey, node_xkey),
            "sender_xkey": self.keys.xkey.public})

    async def undeploy(self, workload_id: str, grace_ms: int | None = None) -> UndeployResponse:
        """Stop a workload: SIGTERM (or unloading a function), then SIGKILL after ``grace_ms``.

        Signed with the client's keys; only the issuer that deployed it, or an admin, may stop it.
        Returns once it has stopped, with how it exited.

        Raises:
            WorkloadNotFound: no node of the namespace runs it.
            Forbidden: the node refuses the claim (``NotOwner``...).

        """
        body = UndeployRequest(grace_ms=grace_ms).model_dump_json(exclude_none=True).encode()
        # The node answers once the workload is gone: after its grace period (and a SIGKILL) at worst.
        grace_s = DEFAULT_STOP_GRACE_S if grace_ms is None else grace_ms / 1000
        return await self._request(
            subjects.UNDEPLOY, target_token(workload_id, "workload id"), UndeployResponse, WorkloadNotFound,
            body=body, timeout=self.timeout + grace_s, signed=True,
        )

    async def workloads(
        self, wait: float = DEFAULT_GATHER_S, expected_nodes: int | None = None
    ) -> list[WorkloadSummary]:
        """Every workload of the namespace, from every node that answers within ``wait``
        seconds (or as soon as ``expected_nodes`` have)."""
        pings = await self._gather(subjects.WPING, WorkloadPing, wait, expected_nodes)
        # A node whose workloads do not fit in one reply answered with its first page and a
        # cursor: its other pages are asked of it alone.
        rest = await asyncio.gather(*(self._more_pages(p.node_id, p.next, gone_ok=True) for p in pings))
        return [w for ping, more in zip(pings, rest) for w in ping.workloads + more]

    async def _more_pages(self, node_id: str, after: str | None, gone_ok: bool = False) -> list[WorkloadSummary]:
        """The workloads of ``node_id`` after the cursor ``after`` (a page's ``next``), asked
        page by page of ``INFO.<node>`` (nex.api.paging); [] for None. ``gone_ok``: a node that
        stopped meanwhile ends the list instead of failing it."""
        found: list[WorkloadSummary] = []
        while after is not None:
            body = PageRequest(after=after).model_dump_json(exclude_none=True).encode()
            try:
                page = await self._request(subjects.INFO, target_token(node_id, "node id"), NodeInfo, NodeNotFound,
                                           body=body)
            except NodeNotFound:
                if gone_ok:
                    return found
                raise
            if page.next is not None and page.next <= after:
                raise InternalError(f"node {node_id} answered INFO after {after!r} with next {page.next!r}")
            found.extend(page.workloads)
            after = page.next
        return found

    async def workload_info(self, workload_id: str) -> WorkloadSummary:
        """The workload ``workload_id`` (a full id) as the node that runs it reports it.

        Raises:
            WorkloadNotFound: no node of the namespace runs it.

        """
        target_token(workload_id, "workload id")
        ping = await self._request(subjects.WPING, workload_id, WorkloadPing, WorkloadNotFound)
        for workload in ping.workloads:
            if workload.id == workload_id:
                return workload
        raise WorkloadNotFound(workload_id)


    async def resolve_node(self, given: str) -> str:
        """The id of the node ``given`` names: a node id, a unique node name, or a unique prefix of
        an id (at least 4 characters), as the ``nex`` command takes them.

        Raises:
            NodeNotFound: no node of the namespace has that id, name or prefix.
            BadRequest: the prefix is too short, or it (or the name) matches several nodes.

        """
        if len(given) == NODE_ID_LENGTH:
            return given
        return resolve_id(given, ((n.node_id, n.name) for n in await self.ping()), "node")

    async def resolve_workload(self, given: str) -> str:
        """The id of the workload ``given`` names: a workload id, a unique name, or a unique prefix
        of an id (at least 4 characters), as ``nex workload stop`` takes them.

        Raises:
            WorkloadNotFound: no workload of the namespace has that id, name or prefix.
            BadRequest: the prefix is too short, or it (or the name) matches several workloads.

        Example:
            ```python
            await client.undeploy(await client.resolve_workload("ticker"))
            ```

        """
        try:
            return (await self.workload_info(given)).id
        except WorkloadNotFound:
            pass  # not a full id: a name, a prefix, or nothing
        return resolve_id(given, ((w.id, w.name) for w in await self.workloads()), "workload")


def _deploy_target(target: str) -> str:
    """A node id, or a bid id (``<node id>.<token>``): one or two subject tokens."""
    if not re.fullmatch(BID_ID_PATTERN, target):
        target_token(target, "node or bid id")
    return target


def _deploy_target_not_found(target: str) -> NexError:
    if "." in target:
        return BidNotFound(target)
    return NodeNotFound(target)
