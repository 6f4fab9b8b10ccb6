"""The control service: decodes requests, calls the node, encodes replies.

This is the one place where a :class:`NexError` becomes a wire error. Node-wide
verbs are endpoints of a NATS micro service (so ``$SRV.PING/INFO/STATS`` see
them, and STATS lists the node's functions too: :class:`NodeService`); each workload gets its own ``UNDEPLOY.<id>`` and ``WPING.<id>``
subscription in its namespace, so a request for an unknown workload, or for a
workload of another namespace, finds no responder and NATS says so at once.
"""

from __future__ import annotations

import logging
from collections import Counter
from functools import partial
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, EndpointStats, Service, ServiceConfig, ServiceStats
from pydantic import BaseModel

from nex import __version__
from nex.api import subjects
from nex.api.claims import CLAIM_HEADER, SignedRequest
from nex.api.errors import BadRequest, InternalError, NexError
from nex.api.models import (
    LameDuckResponse, NodeInfo, NodePing, PageRequest, UndeployRequest, UndeployResponse, WorkloadPing,
    AuctionReply, AuctionRequest, DeployRequest, parse_request,
)
from nex.connection import flush_subscriptions
from nex.node import audit
from nex.node.bids import BidTicket
from nex.node.workloads import Workload

log = logging.getLogger(__name__)

SERVICE_NAME = "nex-node"

Handler = Callable[[str, SignedRequest], Awaitable[BaseModel]]
"""(namespace of the subject, the request as it arrived) -> the reply."""


class NodeFacade(Protocol):
    """What the control service needs of the node."""

    node_id: str

    def ping(self, namespace: str) -> NodePing: ...

    def info(self, namespace: str, page: PageRequest | None = None, max_bytes: int | None = None) -> NodeInfo:
        """The node and one page of the namespace's workloads, within ``max_bytes`` (nex.api.paging)."""
        ...

    def workload_ping(self, namespace: str, workload_id: str | None, page: PageRequest | None = None,
                      max_bytes: int | None = None) -> WorkloadPing:
        """One workload, or (``workload_id`` None) one page of the namespace's workloads."""
        ...

    async def deploy(self, namespace: str, request: DeployRequest, signed: SignedRequest,
                     bid: BidTicket | None = None) -> Workload: ...

    async def undeploy(self, namespace: str, workload_id: str, request: UndeployRequest,
                       signed: SignedRequest) -> UndeployResponse: ...

    async def lameduck(self, signed: SignedRequest) -> LameDuckResponse: ...

    async def auction(self, namespace: str, request: AuctionRequest, signed: SignedRequest) -> AuctionReply: ...

    def functions(self) -> list[Workload]:
        """The functions that run, with their latest counters (``Workload.stats``)."""
        ...


Rejected = Callable[[str, dict[str, Any]], None]
"""Told of each rejected request: (namespace of the feed, audit record). Must not block."""


async def answer(reply: Callable[[bytes, dict[str, str] | None], Awaitable[None]],
                 subject: str, data: bytes, handler: Handler, *,
                 headers: dict[str, str] | None = None,
                 reply_to: str | None = None, on_rejected: Rejected | None = None,
                 max_payload: int | None = None) -> bool:
    """Run a handler and send its model, or its error, as the reply; True when it was an error.

    A refusal (400, 403, 404, 409, 429) is also told to ``on_rejected`` after the
    reply has gone, with an audit record that holds no part of the body. A reply over
    the server's ``max_payload`` would not be sent at all: it becomes an error that says
    so. INFO and WPING page their workloads to stay under it (nex.api.paging), so only
    a single workload larger than a message could still come to this.
    """
    rejected: NexError | None = None
    failed = True
    token = (headers or {}).get(CLAIM_HEADER)
    try:
        namespace = subjects.namespace_of(subject)
        if not subjects.is_token(namespace):
            raise BadRequest(f"invalid namespace {namespace!r}")
        result = await handler(namespace, SignedRequest(subject, data, token))
        payload, reply_headers = result.model_dump_json(exclude_none=True).encode(), None
        if max_payload is not None and len(payload) > max_payload:
            raise InternalError(
                f"the reply is {len(payload)} bytes, over the NATS server's max_payload of {max_payload}:"
                " raise max_payload")
        failed = False
    except NexError as exc:
        payload, reply_headers = exc.encode()
        rejected = exc if audit.is_rejection(exc) else None
    except Exception as exc:  # a bug in the node: answer, log, keep serving
        log.exception("control request on %s failed", subject)
        payload, reply_headers = InternalError(f"internal error: {type(exc).__name__}: {exc}").encode()
    await reply(payload, reply_headers)
    if rejected is not None and on_rejected is not None:
        _audit(on_rejected, subject, reply_to, data, token, rejected)
    return failed


def _audit(on_rejected: Rejected, subject: str, reply_to: str | None, data: bytes, token: str | None,
           error: NexError) -> None:
    try:
        on_rejected(audit.rejection_namespace(subject),
                    audit.rejection_record(subject, reply_to, data, error, token=token))
    except Exception:  # the audit trail failing must not take the control service with it
        log.exception("audit event for a rejected request on %s not published", subject)


class NodeService(Service):
    """nats.micro's service, with two additions to what ``$SRV.STATS`` answers.

    An endpoint's ``num_errors`` counts the requests answered with an error: the
    handlers reply with the error themselves (:func:`answer`) rather than raise,
    so nats.micro would count none. And each function that runs on the node is
    listed as an endpoint too (``function-<name>``, its first trigger subject),
    with its invocations, errors and time spent: the agents answer those
    requests, not this service, so they are not endpoints of it otherwise.
    """

    def __init__(self, nc: Client, config: ServiceConfig, errors: Counter[str],
                 functions: Callable[[], list[EndpointStats]]) -> None:
        super().__init__(nc, config)
        self._errors = errors
        self._functions = functions

    def stats(self) -> ServiceStats:
        stats = super().stats()
        for endpoint in stats.endpoints:
            endpoint.num_errors = self._errors[endpoint.name]
        stats.endpoints.extend(self._functions())
        return stats


def function_endpoint(workload: Workload) -> EndpointStats:
    """A function's counters as an endpoint of ``$SRV.STATS``."""
    request, stats = workload.request, workload.stats
    invocations = stats.get("invocations") or 0
    processing_ns = round((stats.get("latency_sum_ms") or 0.0) * 1_000_000)
    trigger = request.triggers[0] if request.triggers else None
    return EndpointStats(
        name=f"function-{request.name}", subject=trigger.subject if trigger else "",
        queue_group=(trigger.queue or f"nex.{workload.namespace}.{request.name}") if trigger else "",
        num_requests=invocations, num_errors=stats.get("errors") or 0,
        processing_time=processing_ns, average_processing_time=processing_ns // invocations if invocations else 0,
        data={"workload_id": workload.id, "namespace": workload.namespace, "name": request.name,
              "rejected": stats.get("rejected") or 0},
    )


class ControlService:
    def __init__(self, nc: Client, node: NodeFacade, on_rejected: Rejected | None = None) -> None:
        self._nc = nc
        self._node = node
        self._on_rejected = on_rejected
        self._service: Service | None = None
        self._workload_subs: dict[str, list[Subscription]] = {}
        self._errors: Counter[str] = Counter()  # requests answered with an error, by endpoint name

    async def start(self) -> None:
        node_id = self._node.node_id
        self._service = NodeService(self._nc, ServiceConfig(
            name=SERVICE_NAME, version=__version__, description="Nex node control API",
            metadata={"node_id": node_id}, queue_group=f"nex-{node_id}",
        ), self._errors, lambda: [function_endpoint(w) for w in self._node.functions()])
        await self._service.start()
        endpoints: list[tuple[str, str, Handler]] = [
            ("ping", subjects.control("*", subjects.PING), self._ping),
            ("ping-node", subjects.control("*", subjects.PING, node_id), self._ping),
            ("info", subjects.control("*", subjects.INFO, node_id), self._info),
            ("deploy", subjects.control("*", subjects.DEPLOY, node_id), self._deploy),
            ("lameduck", subjects.control("*", subjects.LAMEDUCK, node_id), self._lameduck),
            ("wping", subjects.control("*", subjects.WPING), self._wping_all),
            ("auction", subjects.control("*", subjects.AUCTION), self._auction),
            # A sampled auction (nex.placement.sampling) asks a few nodes, each on its own subject.
            ("auction-node", subjects.control("*", subjects.AUCTION, node_id), self._auction),
        ]
        for name, subject, handler in endpoints:
            await self._service.add_endpoint(EndpointConfig(
                name=name, subject=subject, handler=self._micro_handler(name, handler),
            ))
        await flush_subscriptions(self._nc)

    async def stop(self) -> None:
        for subs in self._workload_subs.values():
            for sub in subs:
                await sub.unsubscribe()
        self._workload_subs.clear()
        if self._service is not None:
            await self._service.stop()

    def stats(self) -> ServiceStats | None:
        """What ``$SRV.STATS`` answers now; None before start."""
        return self._service.stats() if self._service is not None else None

    def _micro_handler(self, name: str, handler: Handler) -> Callable[[Request], Awaitable[None]]:
        async def serve(request: Request) -> None:
            if await answer(request.respond, request.subject, request.data, handler, headers=request.headers,
                            reply_to=_reply_subject(request), on_rejected=self._on_rejected,
                            max_payload=self._nc.max_payload):
                self._errors[name] += 1
        return serve

    def _msg_handler(self, handler: Handler) -> Callable[[Msg], Awaitable[None]]:
        async def serve(msg: Msg) -> None:
            if not msg.reply:
                return

            async def reply(payload: bytes, headers: dict[str, str] | None) -> None:
                await self._nc.publish(msg.reply, payload, headers=headers)
            await answer(reply, msg.subject, msg.data, handler, headers=msg.headers,
                         reply_to=msg.reply, on_rejected=self._on_rejected, max_payload=self._nc.max_payload)
        return serve

    # -- per-workload subjects ---------------------------------------------------

    async def watch_workload(self, workload: Workload) -> None:
        ns, wid = workload.namespace, workload.id

        async def undeploy(namespace: str, signed: SignedRequest) -> UndeployResponse:
            request = parse_request(UndeployRequest, signed.body)
            return await self._node.undeploy(namespace, wid, request, signed)

        async def wping(namespace: str, signed: SignedRequest) -> WorkloadPing:
            return self._node.workload_ping(namespace, wid)

        # The deploy reply goes out next, and an UNDEPLOY sent right after it must find these. It
        # does without a flush: the SUBs and the reply leave on this one connection in this order,
        # and the server passes the interest along its routes before the reply (as for bids).
        self._workload_subs[wid] = [
            await self._nc.subscribe(subjects.control(ns, subjects.UNDEPLOY, wid), cb=self._msg_handler(undeploy)),
            await self._nc.subscribe(subjects.control(ns, subjects.WPING, wid), cb=self._msg_handler(wping)),
        ]

    async def unwatch_workload(self, workload: Workload) -> None:
        for sub in self._workload_subs.pop(workload.id, []):
            await sub.unsubscribe()

    # -- node-wide verbs -----------------------------------------------------------

    async def _ping(self, namespace: str, signed: SignedRequest) -> NodePing:
        return self._node.ping(namespace)

    async def _info(self, namespace: str, signed: SignedRequest) -> NodeInfo:
        return self._node.info(namespace, parse_request(PageRequest, signed.body), self._nc.max_payload)

    async def _wping_all(self, namespace: str, signed: SignedRequest) -> WorkloadPing:
        return self._node.workload_ping(namespace, None, parse_request(PageRequest, signed.body),
                                        self._nc.max_payload)

    async def _deploy(self, namespace: str, signed: SignedRequest, bid: BidTicket | None = None) -> BaseModel:
        request = parse_request(DeployRequest, signed.body)
        if request.namespace is not None and request.namespace != namespace:
            raise BadRequest(f"request namespace {request.namespace!r} differs from subject namespace {namespace!r}")
        workload = await self._node.deploy(namespace, request, signed, bid)
        return workload.summary()

    async def _lameduck(self, namespace: str, signed: SignedRequest) -> LameDuckResponse:
        return await self._node.lameduck(signed)

    async def _auction(self, namespace: str, signed: SignedRequest) -> AuctionReply:
        return await self._node.auction(namespace, parse_request(AuctionRequest, signed.body), signed)

    async def serve_bid_deploy(self, msg: Msg, bid: BidTicket) -> None:
        """A DEPLOY through a bid (``DEPLOY.<bid_id>``, see nex.node.bids): the same path as to the node.
        The node uses the bid up only once the request passed every check; otherwise it holds on."""
        try:
            await self._msg_handler(partial(self._deploy, bid=bid))(msg)
        finally:
            bid.release_unless_used()


def _reply_subject(request: Request) -> str | None:
    # nats.micro's Request does not expose the reply subject; the audit record wants its inbox prefix.
    msg = getattr(request, "_msg", None)
    return getattr(msg, "reply", None)
