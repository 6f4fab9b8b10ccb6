"""The async Python client of the control API; the ``nex`` CLI is a thin shell over it.

Every failure surfaces as a :class:`nex.api.errors.NexError`: an error reply from a
node, a subject nobody answers (``NodeNotFound``, ``WorkloadNotFound``), a request
that times out or a NATS server that cannot be reached (``Unavailable``).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import re
import time
from collections import Counter
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence, TypeVar
from urllib.parse import quote

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig, DeliverPolicy, ObjectStoreConfig
from pydantic import BaseModel, ValidationError

from nex.api import claims, subjects
from nex.api.errors import (
    BadArtifact,
    BadRequest,
    BidNotFound,
    Conflict,
    InternalError,
    NatsRefused,
    NatsUnavailable,
    NexError,
    NodeNotFound,
    NotFound,
    Unavailable,
    UnknownWorkload,
    WorkloadNotFound,
    from_reply,
)
from nex.api.events import CloudEvent
from nex.api.tracecontext import TRACEPARENT, TraceParent
from nex.api.models import (
    Artifact,
    AuctionReply,
    BID_ID_PATTERN,
    DEFAULT_STOP_GRACE_S,
    AuctionRequest,
    Bid,
    DeadLetter,
    DeployRequest,
    LameDuckResponse,
    Lifecycle,
    Limits,
    NetworkMode,
    NodeInfo,
    NodePing,
    NodeRecord,
    NodeState,
    PageRequest,
    Trigger,
    UndeployRequest,
    UndeployResponse,
    WorkloadPing,
    WorkloadSummary,
    WorkloadType,
    describe_validation_error,
)
from nex.artifacts import sha256_file
from nex.fleet.store import AppStore
from nex.connection import ConnectOptions, NoNatsServer, confined_inbox_prefix, connect
from nex.images.reference import SCHEME as OCI_SCHEME, parse_reference
from nex.images.registry import manifest_digest
from nex.jsreplicas import nodes_replicas
from nex.localfiles import CountingReader, guess_type, workload_name_for
from nex.placement import sampling
from nex.placement.scoring import rank_bids
from nex.security.keystore import UserKeys
from nex.security.xkeys import seal_env

__all__ = [
    "AsyncReceipt", "LogLine", "NexClient", "Progress", "constraints_of", "guess_type", "rank_bids", "workload_name_for",
]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) while an artifact uploads."""

M = TypeVar("M", bound=BaseModel)

DEFAULT_GATHER_S = 0.5
REGISTRY_MAX_AGE_S = 1.0  # how long a read of NEX_NODES chooses whom a placement's auction asks
# A failed first connect gives up after this many tries per server (nats-py loops
# forever on -1); the same number bounds reconnects of a long `logs -f`.
_CONNECT_ATTEMPTS = 2


@dataclass(frozen=True)
class LogLine:
    workload_id: str
    stream: str
    data: bytes
    time: datetime

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")


def _target(value: str, what: str) -> str:
    # The target becomes a subject token; a '*' or '.' would address other nodes.
    if not subjects.is_token(value):
        raise BadRequest(f"invalid {what} {value!r}")
    return value


def _is_no_responders(msg: Msg) -> bool:
    return bool(msg.headers) and msg.headers.get("Status") == "503" and not msg.data


class _ReplyInbox:
    """Where the replies of a client's scatter-gather requests (PING, AUCTION...) arrive.

    One wildcard subscription for all of them, made on first use, rather than a
    subscription per request: a subscription is a SUB and an UNSUB that every
    server of a cluster passes along its routes, and an auction a placement was
    the most frequent such request.
    """

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._subscription: Subscription | None = None
        self._subscribing = asyncio.Lock()
        self._waiting: dict[str, asyncio.Queue[Msg]] = {}
        self._tokens = itertools.count()

    async def open(self) -> tuple[str, asyncio.Queue[Msg]]:
        """A new inbox subject, and the queue its messages arrive in until :meth:`close`."""
        async with self._subscribing:
            if self._subscription is None:
                self._subscription = await self._nc.subscribe(f"{self._prefix}.*", cb=self._deliver)
        inbox = f"{self._prefix}.{next(self._tokens)}"
        arriving: asyncio.Queue[Msg] = asyncio.Queue()
        self._waiting[inbox] = arriving
        return inbox, arriving

    def close(self, inbox: str) -> None:
        self._waiting.pop(inbox, None)  # what still comes for it is dropped

    async def _deliver(self, msg: Msg) -> None:
        arriving = self._waiting.get(msg.subject)
        if arriving is not None:
            arriving.put_nowait(msg)


class NexClient:
    """Requests to the nodes of one namespace over a connected nats-py client.

    With ``keys`` every control request that changes something (DEPLOY, UNDEPLOY,
    LAMEDUCK) and every AUCTION carries a claim signed by ``keys.issuer`` in its
    ``Nex-Claim`` header, bound to its subject and body, and a deploy's env travels
    sealed to the target node's xkey (docs/security.md).
    """

    def __init__(self, nc: Client, namespace: str = subjects.DEFAULT_NAMESPACE, timeout: float = 5.0,
                 keys: UserKeys | None = None, confined: bool = False,
                 sample_threshold: int = sampling.SAMPLE_THRESHOLD) -> None:
        self.nc = nc
        # Past this many eligible nodes in the registry, place() asks a sample of them (nex.placement.sampling).
        self.sample_threshold = sample_threshold
        # Connected with the credentials of one namespace (nex creds): JetStream is read without
        # consumers, which such a user may not create (nex.security.natsauth.client_permissions).
        self.confined = confined
        self.namespace = _target(namespace, "namespace")
        self.timeout = timeout
        self.keys = keys
        self._owns_connection = False
        self._placing: Counter[str] = Counter()  # node id -> placements of this client under way there
        self._replies = _ReplyInbox(nc)
        self._registry: tuple[float, list[NodeRecord]] | None = None  # (when read, the records)
        self._registry_lock = asyncio.Lock()

    @classmethod
    async def connect(
        cls, options: ConnectOptions, namespace: str = subjects.DEFAULT_NAMESPACE, timeout: float = 5.0,
        keys: UserKeys | None = None,
    ) -> NexClient:
        """Connect to NATS; the client closes the connection in :meth:`close`."""
        _target(namespace, "namespace")
        connect_errors: list[BaseException] = []
        connected = False

        async def on_error(exc: BaseException) -> None:
            # Instead of nats-py's default, which logs a traceback: while connecting the
            # last error explains the failure; later ones (permissions...) are warnings.
            if connected:
                log.warning("nats: %s", _describe(exc))
            else:
                connect_errors.append(exc)

        where = ",".join(options.servers)
        try:
            nc = await connect(
                options.with_name(options.name or "nex-client"), error_cb=on_error, fail_fast=True,
                max_reconnect_attempts=_CONNECT_ATTEMPTS, connect_timeout=max(1, round(timeout)),
            )
        except NoNatsServer as exc:
            raise NatsUnavailable(where, exc.problem) from None
        except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
            # The server refuses bad credentials with -ERR and then closes: the refusal,
            # not the reset that follows it, is what the user needs to read.
            refusals = [e for e in connect_errors if isinstance(e, nats.errors.Error) and "authoriz" in str(e).lower()]
            if refusals:
                raise NatsRefused(where, _describe(refusals[-1])) from None
            raise NatsUnavailable(where, _describe(connect_errors[-1] if connect_errors else exc)) from None
        connected = True
        confined = options.creds is not None and confined_inbox_prefix(options.creds) is not None
        client = cls(nc, namespace, timeout, keys, confined)
        client._owns_connection = True
        return client

    async def close(self) -> None:
        if self._owns_connection and not self.nc.is_closed:
            await self.nc.close()

    async def __aenter__(self) -> NexClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- nodes -------------------------------------------------------------------------

    async def ping(self, wait: float = DEFAULT_GATHER_S, expected: int | None = None) -> list[NodePing]:
        """Every node that answers within ``wait`` seconds (or as soon as ``expected`` have)."""
        return await self._gather(subjects.PING, NodePing, wait, expected)

    async def ping_node(self, node_id: str, timeout: float | None = None) -> NodePing:
        """The node's PING; NodeNotFound when nothing listens on its subject (no such node, or
        one whose connection is gone), Unavailable when it does not answer in time."""
        return await self._request(subjects.PING, _target(node_id, "node id"), NodePing, NodeNotFound,
                                   timeout=timeout)

    async def node_info(self, node_id: str) -> NodeInfo:
        """The node, with every workload of the namespace on it (read page by page)."""
        first = await self._request(subjects.INFO, _target(node_id, "node id"), NodeInfo, NodeNotFound)
        rest = await self._more_pages(node_id, first.next)
        return first.model_copy(update={"workloads": first.workloads + rest, "next": None})

    async def lameduck(self, node_id: str) -> LameDuckResponse:
        return await self._request(
            subjects.LAMEDUCK, _target(node_id, "node id"), LameDuckResponse, NodeNotFound, signed=True,
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

    # -- placement ---------------------------------------------------------------------

    async def auction(self, request: AuctionRequest, wait: float = DEFAULT_GATHER_S,
                      expected: int | None = None, nodes: Sequence[str] | None = None) -> list[AuctionReply]:
        """Every node's answer to an auction, a bid or a decline, within ``wait`` seconds
        (or as soon as ``expected`` nodes have answered). With ``nodes``, only those nodes are
        asked, each on its own subject (``AUCTION.<node id>``, with a claim for that subject),
        and the wait ends once each has answered."""
        body = request.model_dump_json(exclude_none=True).encode()
        if nodes is None:
            subject = self._subject(subjects.AUCTION)
            return await self._gather(subjects.AUCTION, AuctionReply, wait, expected, body,
                                      headers=self._claim_header(subject, body))
        asked = [self._subject(subjects.AUCTION, _target(node_id, "node id")) for node_id in dict.fromkeys(nodes)]
        if not asked:
            return []
        return await self._gather(subjects.AUCTION, AuctionReply, wait, len(asked), body,
                                  to=[(subject, self._claim_header(subject, body)) for subject in asked])

    async def sampled_auction(self, request: AuctionRequest, nodes: Sequence[str] | None,
                              wait: float = DEFAULT_GATHER_S, expected: int | None = None) -> list[AuctionReply]:
        """The answers of ``nodes`` (a sample, nex.placement.sampling), or, when none of them bids
        (or ``nodes`` is None), of every node: a workload only an unsampled node can take still
        finds it. The declines returned are those of the nodes asked last."""
        if nodes:
            replies = await self.auction(request, wait, nodes=nodes)
            if any(r.bid is not None for r in replies):
                return replies
        return await self.auction(request, wait, expected)

    async def registry(self) -> list[NodeRecord] | None:
        """Every node's record in NEX_NODES; None when it cannot be read (no registry, or a
        client confined to a namespace, which may not read it with a consumer). A read serves
        the placements of the next :data:`REGISTRY_MAX_AGE_S` too: a burst reads it once."""
        if self.confined:
            return None
        async with self._registry_lock:
            now = time.monotonic()
            if self._registry is not None and now - self._registry[0] < REGISTRY_MAX_AGE_S:
                return self._registry[1]
            try:
                records = await AppStore(self.nc, timeout=self.timeout).nodes()
            except (NexError, nats.errors.Error, asyncio.TimeoutError):
                return None
            self._registry = (now, records)
            return records

    async def live_node_count(self) -> int | None:
        """How many nodes the NEX_NODES registry lists now; None without a registry (or an empty one)."""
        js = self.nc.jetstream(timeout=self.timeout)
        try:
            if self.confined:  # no consumer, so no watch: the keys the stream holds (a node that left may count)
                info = await js.stream_info(f"KV_{subjects.NODES_BUCKET}",
                                            subjects_filter=f"$KV.{subjects.NODES_BUCKET}.*")
                return len(info.state.subjects or {}) or None
            kv = await js.key_value(subjects.NODES_BUCKET)
            # A key per node; <node id>.<part> keys hold the rest of a large record (nex.api.paging).
            return len([key for key in await kv.keys() if "." not in key]) or None
        except nats.js.errors.NoKeysError:
            return None
        except (nats.js.errors.BucketNotFoundError, nats.errors.NoRespondersError,
                nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError):
            return None  # no registry (or no JetStream): the auction waits its whole window

    async def place(self, request: DeployRequest, constraints: AuctionRequest | None = None,
                    wait: float = DEFAULT_GATHER_S, expected: int | None = None) -> WorkloadSummary:
        """Deploy on the node with the best bid; ``constraints`` default to the request's type,
        lifecycle and memory limit. Raises :class:`Unavailable` naming each node's reason
        when no node bids."""
        bids = await self._bids(constraints or constraints_of(request), wait, expected)
        return await self._deploy_to_best(bids, request)

    async def _bids(self, constraints: AuctionRequest, wait: float, expected: int | None) -> list[Bid]:
        """The bids of an auction, of the eligible nodes or a sample of them once the registry lists
        more than ``sample_threshold`` (nex.placement.sampling.whom_to_ask); Unavailable, with every
        decline of the nodes asked, when there is none."""
        if expected is None:
            expected = await self.live_node_count()
        asked = None
        if expected is not None and expected > self.sample_threshold:
            records = await self.registry()
            [asked] = sampling.whom_to_ask(records or [], constraints, threshold=self.sample_threshold)
        replies = await self.sampled_auction(constraints, asked, wait, expected)
        if not replies:
            raise Unavailable(f"no node is running in namespace {self.namespace!r}")
        bids = [r.bid for r in replies if r.bid is not None]
        if not bids:
            reasons = "; ".join(sorted(r.declined or f"node {r.node_id} made no bid" for r in replies))
            raise Unavailable(f"no node can take the workload: {reasons}")
        return bids

    async def _deploy_to_best(self, bids: list[Bid], request: DeployRequest) -> WorkloadSummary:
        """Deploy through the best bid that still holds; a bid that expired or a node gone
        lame duck meanwhile passes the turn to the next bid.

        The placements this client has under way count against their nodes' bids (as
        workloads would), so a burst of concurrent placements spreads at once.
        """
        last: NexError | None = None
        for bid in rank_bids(bids, self._placing):
            self._placing[bid.node_id] += 1  # before any await: the next placement sees it
            try:
                return await self.deploy(bid.bid_id, request, xkey=bid.xkey)
            except (BidNotFound, Conflict) as exc:  # not e.g. a missing artifact: any node would say so
                last = exc
            finally:
                self._placing[bid.node_id] -= 1
                if self._placing[bid.node_id] <= 0:
                    del self._placing[bid.node_id]
        assert last is not None
        raise last

    # -- workloads ---------------------------------------------------------------------

    async def deploy(self, target: str, request: DeployRequest, xkey: str | None = None) -> WorkloadSummary:
        """Deploy on ``target``, a node id or the id of a bid the node made in an auction.

        With keys, the request is signed and env sealed to ``xkey`` (the target node's
        key; looked up with a PING when not given).
        """
        _deploy_target(target)
        if self.keys is not None and request.env:
            request = await self._sealed(target, request, xkey)
        try:
            return await self._request(
                subjects.DEPLOY, target, WorkloadSummary, _deploy_target_not_found,
                body=request.model_dump_json(exclude_none=True).encode(), signed=True,
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
        body = UndeployRequest(grace_ms=grace_ms).model_dump_json(exclude_none=True).encode()
        # The node answers once the workload is gone: after its grace period (and a SIGKILL) at worst.
        grace_s = DEFAULT_STOP_GRACE_S if grace_ms is None else grace_ms / 1000
        return await self._request(
            subjects.UNDEPLOY, _target(workload_id, "workload id"), UndeployResponse, WorkloadNotFound,
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
                page = await self._request(subjects.INFO, _target(node_id, "node id"), NodeInfo, NodeNotFound,
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
        _target(workload_id, "workload id")
        ping = await self._request(subjects.WPING, workload_id, WorkloadPing, WorkloadNotFound)
        for workload in ping.workloads:
            if workload.id == workload_id:
                return workload
        raise WorkloadNotFound(workload_id)

    # -- artifacts and devrun ----------------------------------------------------------

    async def upload_artifact(
        self, path: str | Path, key: str | None = None, progress: Progress | None = None,
        namespace: str | None = None,
    ) -> Artifact:
        """Put a file into the artifact bucket of the client's namespace (or of ``namespace``);
        the key defaults to its sha256.

        An object that already holds the same bytes under that key is not sent again.
        """
        path = Path(path)
        sha256 = await asyncio.to_thread(sha256_file, path)
        return await self._upload(path, key or sha256, sha256, progress, namespace)

    async def devrun(
        self,
        path: str | Path,
        *,
        type: WorkloadType | str | None = None,
        name: str | None = None,
        triggers: Iterable[str | Trigger] = (),
        env: Mapping[str, str] | None = None,
        argv: Iterable[str] = (),
        lifecycle: Lifecycle | str | None = None,
        limits: Limits | None = None,
        network: NetworkMode | str | None = None,
        node_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        progress: Progress | None = None,
    ) -> WorkloadSummary:
        """Upload a local file and deploy it: the quickest way from a file to a workload.

        ``path`` may also be an image reference ``oci://host/repo:tag``: nothing is
        uploaded, the node pulls it, and its sha256 is the manifest digest the
        registry gives now (resolved here with skopeo). Without ``node_id`` the node is
        placed by auction, among the nodes that have every one of ``tags``. The request
        is checked and the auction held before anything is uploaded.
        """
        if node_id is not None and tags:
            raise BadRequest("give a node or placement tags, not both")
        is_reference = isinstance(path, str) and path.startswith(OCI_SCHEME)
        if is_reference:
            reference = parse_reference(path)
            workload_type = WorkloadType(type or WorkloadType.OCI)
            sha256 = (await manifest_digest(reference)).removeprefix("sha256:")
            artifact = Artifact(uri=path, sha256=sha256)
            default_name = workload_name_for(reference.repository.rsplit("/", 1)[-1])
        else:
            path = Path(path)
            workload_type = WorkloadType(type) if type else await asyncio.to_thread(guess_type, path)
            sha256 = await asyncio.to_thread(sha256_file, path)
            artifact = Artifact(uri=self._artifact_uri(sha256), sha256=sha256)
            default_name = workload_name_for(path)
        try:
            request = DeployRequest(
                name=name or default_name,
                type=workload_type,
                lifecycle=Lifecycle(lifecycle) if lifecycle else None,
                artifact=artifact,
                namespace=self.namespace,
                argv=list(argv),
                env=dict(env or {}),
                triggers=[t if isinstance(t, Trigger) else Trigger(subject=t) for t in triggers],
                limits=limits or Limits(),
                network=NetworkMode(network) if network else None,
            )
        except ValidationError as exc:
            raise BadRequest(describe_validation_error(exc)) from None
        if node_id is not None:
            if not is_reference:
                await self._upload(Path(path), sha256, sha256, progress)
            return await self.deploy(node_id, request)
        try:
            constraints = AuctionRequest(type=request.type, lifecycle=request.lifecycle, tags=dict(tags or {}),
                                         memory_mib=request.limits.memory_mib)
        except ValidationError as exc:
            raise BadRequest(describe_validation_error(exc)) from None
        bids = await self._bids(constraints, DEFAULT_GATHER_S, None)
        if not is_reference:
            await self._upload(Path(path), sha256, sha256, progress)
        try:
            return await self._deploy_to_best(bids, request)
        except BidNotFound:  # the upload outlasted the bids: hold the auction again
            return await self.place(request, constraints)

    # -- feeds -------------------------------------------------------------------------

    async def logs(self, workload_id: str, follow: bool = False) -> AsyncIterator[LogLine]:
        """The log lines of a workload kept in the logs stream, then new ones when ``follow``.

        UnknownWorkload when the stream keeps none of its lines and no node runs it: there is
        nothing to print, and nothing will come to follow."""
        filter_subject = subjects.logs_filter(self.namespace, _target(workload_id, "workload id"))

        async def unknown_unless_running() -> None:
            try:
                await self.workload_info(workload_id)
            except WorkloadNotFound:
                raise UnknownWorkload(workload_id, self.namespace) from None

        messages = self._stream(subjects.LOGS_STREAM, filter_subject, follow, "logs", when_empty=unknown_unless_running)
        async with aclosing(messages):
            async for msg in messages:
                tokens = msg.subject.split(".")
                yield LogLine(workload_id=tokens[-2], stream=tokens[-1], data=msg.data, time=msg.time)

    async def events(
        self, follow: bool = False, types: Iterable[str] | None = None
    ) -> AsyncIterator[CloudEvent]:
        """The events kept in the events stream, then new ones when ``follow``.

        ``types`` are event type tokens (``workload_started``) or full CloudEvents types.
        """
        wanted = {t.rsplit(".", 1)[-1] for t in types or ()}
        if len(wanted) == 1:
            filter_subject = subjects.events(self.namespace, _target(next(iter(wanted)), "event type"))
        else:
            filter_subject = subjects.events_filter(self.namespace)
        messages = self._stream(subjects.EVENTS_STREAM, filter_subject, follow, "events")
        async with aclosing(messages):
            async for msg in messages:
                if wanted and msg.subject.rsplit(".", 1)[-1] not in wanted:
                    continue
                try:
                    event = CloudEvent.model_validate_json(msg.data)
                except ValidationError as exc:
                    log.warning("skipped a malformed event on %s: %s", msg.subject,
                                describe_validation_error(exc))
                    continue
                yield event

    # -- functions ---------------------------------------------------------------------

    async def invoke(self, subject: str, payload: bytes = b"", timeout: float | None = None, *,
                     traceparent: TraceParent | str | None = None) -> bytes:
        """Call a function through one of its trigger subjects; returns the reply payload.

        ``traceparent`` (W3C; ``TraceParent.new()`` starts a trace) makes the call a span of that
        trace: the function's host calls carry it on (docs/observability.md).
        """
        timeout = self.timeout if timeout is None else timeout
        headers = _trace_headers(traceparent) or None
        try:
            msg = await self.nc.request(subject, payload, timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise NotFound(f"no function is triggered by {subject!r}") from None
        except nats.errors.TimeoutError:
            raise Unavailable(f"no reply from {subject!r} within {timeout:g}s") from None
        except nats.errors.BadSubjectError:
            raise BadRequest(f"invalid subject {subject!r}") from None
        error = from_reply(msg.data, msg.headers)
        if error is not None:
            raise error
        return msg.data

    # -- async invocation and dead letters (docs/functions.md, "Triggers") ----------------

    async def invoke_async(self, subject: str, payload: bytes = b"", key: str | None = None,
                           reply_to: str | None = None, *,
                           traceparent: TraceParent | str | None = None) -> AsyncReceipt:
        """Publish an async invocation into the function's stream (a plain JetStream publish).

        ``key`` is the idempotency key (``Nats-Msg-Id``): a re-publish within the stream's
        duplicate window is dropped, and a key that completed is not run again. The result
        goes to ``reply_to`` when given (a subject of the namespace or of the function)."""
        headers = {subjects.MSG_ID_HEADER: key} if key else {}
        if reply_to:
            headers[subjects.REPLY_TO_HEADER] = reply_to
        headers.update(_trace_headers(traceparent))  # the run, however late, is a span of this trace
        try:
            ack = await self.nc.jetstream().publish(subject, payload, timeout=self.timeout, headers=headers or None)
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
            raise NotFound(f"no async function is triggered by {subject!r}: no stream captures it") from None
        except nats.errors.TimeoutError:
            raise Unavailable(f"no JetStream acknowledgement for {subject!r} within {self.timeout:g}s") from None
        except nats.errors.BadSubjectError:
            raise BadRequest(f"invalid subject {subject!r}") from None
        except nats.js.errors.APIError as exc:
            raise BadRequest(f"JetStream refused the invocation on {subject!r}: {exc.description}") from None
        return AsyncReceipt(stream=ack.stream, seq=ack.seq, key=key or f"seq-{ack.seq}", duplicate=bool(ack.duplicate))

    @property
    def _dead_letters(self) -> str:
        """NEX_DLQ, or for a confined client its namespace's copy of its part (nex creds makes it)."""
        return subjects.dead_letter_stream(self.namespace) if self.confined else subjects.DLQ_STREAM

    async def dlq_list(self, function: str | None = None) -> list[DeadLetter]:
        """The dead letters of the namespace (of one function), oldest first."""
        if function is not None:
            _target(function, "function")
        js = self.nc.jetstream()
        wanted = subjects.dead_letters_filter(self.namespace, function or "*")
        letters: list[DeadLetter] = []
        seq = 1
        while True:
            try:
                raw = await js.get_msg(self._dead_letters, seq=seq, subject=wanted, next=True)
            except nats.js.errors.NotFoundError:
                return letters  # no stream yet, or nothing past seq
            except nats.errors.TimeoutError:
                raise Unavailable(f"no answer from JetStream about {self._dead_letters}") from None
            letters.append(_dead_letter(raw))
            seq = (raw.seq or seq) + 1

    async def dlq_replay(self, seq: int) -> AsyncReceipt:
        """Publish dead letter ``seq`` again on its subject, with its idempotency key; then delete it."""
        js = self.nc.jetstream()
        try:
            raw = await js.get_msg(self._dead_letters, seq=seq)
        except nats.js.errors.NotFoundError:
            raise NotFound(f"no dead letter {seq}") from None
        letter = _dead_letter(raw)
        if letter.namespace != self.namespace:
            raise NotFound(f"no dead letter {seq} in namespace {self.namespace!r}")
        headers = {
            # A new message id (the key's own would be dropped as a duplicate within the window);
            # Nex-Key keeps the idempotency key, so a key that completed meanwhile is not run twice.
            subjects.MSG_ID_HEADER: f"replay:{letter.namespace}:{letter.function}:{seq}",
            subjects.KEY_HEADER: letter.key,
        }
        if letter.reply_to:
            headers[subjects.REPLY_TO_HEADER] = letter.reply_to
        try:
            ack = await js.publish(letter.subject, raw.data or b"", timeout=self.timeout, headers=headers)
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
            raise NotFound(f"no async function is triggered by {letter.subject!r} any more") from None
        except nats.errors.TimeoutError:
            raise Unavailable(f"no JetStream acknowledgement for {letter.subject!r} within {self.timeout:g}s") from None
        await js.delete_msg(self._dead_letters, seq)
        return AsyncReceipt(stream=ack.stream, seq=ack.seq, key=letter.key, duplicate=bool(ack.duplicate))

    # -- plumbing ----------------------------------------------------------------------

    def _subject(self, verb: str, target: str | None = None) -> str:
        return subjects.control(self.namespace, verb, target)

    def _claim_header(self, subject: str, body: bytes) -> dict[str, str] | None:
        """The ``Nex-Claim`` header for sending ``body`` to ``subject``; None without keys."""
        if self.keys is None:
            return None
        return {claims.CLAIM_HEADER: claims.sign_request(self.keys.issuer, subject, body, time.time())}

    async def _request(
        self, verb: str, target: str, model: type[M], not_found: Callable[[str], NexError],
        body: bytes = b"", timeout: float | None = None, signed: bool = False,
    ) -> M:
        """One control request; ``signed``: with a claim, when the client has keys."""
        subject = self._subject(verb, target)
        timeout = self.timeout if timeout is None else timeout
        headers = self._claim_header(subject, body) if signed else None
        try:
            msg = await self.nc.request(subject, body, timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise not_found(target) from None
        except nats.errors.TimeoutError:
            raise Unavailable(f"no reply to {verb} {target} within {timeout:g}s") from None
        return _decode(msg, model, subject)

    async def _gather(self, verb: str, model: type[M], wait: float, expected: int | None,
                      body: bytes = b"", headers: dict[str, str] | None = None,
                      to: Sequence[tuple[str, dict[str, str] | None]] | None = None) -> list[M]:
        """Scatter a request to every node (or to the subjects of ``to``, each with its headers)
        and collect the replies that come within ``wait``."""
        subject = self._subject(verb)
        inbox, arriving = await self._replies.open()
        try:
            for each, each_headers in to if to is not None else [(subject, headers)]:
                await self.nc.publish(each, body, reply=inbox, headers=each_headers)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            replies: list[M] = []
            gone = 0  # subjects of ``to`` nothing listens to (a node that left)
            while (remaining := deadline - loop.time()) > 0 and len(replies) + gone != expected:
                try:
                    msg = await asyncio.wait_for(arriving.get(), remaining)
                except asyncio.TimeoutError:
                    break
                if _is_no_responders(msg):
                    if to is None:
                        break  # the server says at once that nothing listens: no node
                    gone += 1
                    continue
                replies.append(_decode(msg, model, subject))
            return replies
        finally:
            self._replies.close(inbox)

    def _artifact_uri(self, key: str, namespace: str | None = None) -> str:
        return f"nats://{subjects.artifact_bucket(namespace or self.namespace)}/{quote(key)}"

    async def _upload(self, path: Path, key: str, sha256: str, progress: Progress | None,
                      namespace: str | None = None) -> Artifact:
        total = path.stat().st_size
        artifact = Artifact(uri=self._artifact_uri(key, namespace), sha256=sha256)
        expected_digest = "SHA-256=" + base64.urlsafe_b64encode(bytes.fromhex(sha256)).decode()
        try:
            store = await self._artifact_store(subjects.artifact_bucket(namespace or self.namespace))
            try:
                existing = await store.get_info(key)
                if existing.digest == expected_digest and existing.size == total:
                    if progress:
                        progress(total, total)
                    return artifact
            except nats.js.errors.NotFoundError:
                pass
            # store.put reads the file in a worker thread; progress hops back to the loop.
            loop = asyncio.get_running_loop()
            done = 0

            def on_read(n: int) -> None:
                nonlocal done
                done += n
                if progress:
                    loop.call_soon_threadsafe(progress, done, total)

            with path.open("rb") as f:
                info = await store.put(key, CountingReader(f, on_read))
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
            raise Unavailable("JetStream is not enabled on this NATS server") from None
        if info.digest != expected_digest:
            raise BadArtifact(f"{path} changed while it was uploaded; try again")
        return artifact

    async def _artifact_store(self, bucket: str) -> Any:
        js = self.nc.jetstream(timeout=self.timeout)
        try:
            return await js.object_store(bucket)
        except nats.js.errors.BucketNotFoundError:
            pass
        try:
            return await js.create_object_store(bucket, config=ObjectStoreConfig(
                bucket=bucket, replicas=await nodes_replicas(js)))
        except nats.errors.TimeoutError:
            # Credentials of a namespace may not create streams (nex creds makes the bucket).
            raise Unavailable(f"the artifact bucket {bucket} does not exist, and JetStream did not create it"
                              " for these credentials: an operator makes it (nex creds, or nats object add"
                              f" {bucket})") from None

    async def recent_event_messages(self, count: int) -> AsyncIterator[Msg]:
        """The last ``count`` messages of the events stream, of every namespace, oldest first (raw:
        a watcher parses them as it parses live ones). None when no node has made the stream yet,
        or without JetStream."""
        js = self.nc.jetstream(timeout=self.timeout)
        try:
            info = await js.stream_info(subjects.EVENTS_STREAM)
        except (nats.js.errors.NotFoundError, nats.errors.NoRespondersError,
                nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError):
            return
        if not info.state.messages:
            return
        start = max(info.state.first_seq, info.state.last_seq - count + 1)
        sub = await js.subscribe(subjects.events_filter("*"), stream=subjects.EVENTS_STREAM, ordered_consumer=True,
                                 config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                                       opt_start_seq=start))
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=self.timeout)
                except nats.errors.TimeoutError:
                    return  # the history ended early: messages were removed while we read
                yield msg
                if msg.metadata.num_pending == 0:
                    return
        finally:
            if not self.nc.is_closed:
                await sub.unsubscribe()

    async def _stream(
        self, stream: str, filter_subject: str, follow: bool, what: str,
        when_empty: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncIterator[FeedMessage]:
        """The messages of a stream under a filter, oldest first; live ones too when ``follow``.
        ``when_empty`` is awaited (and may raise) when the stream keeps no message under the filter."""
        if self.confined:
            async with aclosing(self._namespace_feed(filter_subject, follow, what, when_empty)) as messages:
                async for msg in messages:
                    yield msg
            return
        js = self.nc.jetstream(timeout=self.timeout)
        try:
            info = await js.stream_info(stream, subjects_filter=filter_subject)
        except nats.js.errors.NotFoundError:
            raise NotFound(
                f"there is no {what} stream ({stream}) yet: no Nex node has started on this NATS"
            ) from None
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
            raise Unavailable("JetStream is not enabled on this NATS server") from None
        kept = any((info.state.subjects or {}).values())
        if not kept and when_empty is not None:
            await when_empty()
        if not follow and not kept:
            return
        sub = await js.subscribe(
            filter_subject, stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=None if follow else self.timeout)
                except nats.errors.TimeoutError:
                    return  # history ended early: messages were removed while we read
                yield FeedMessage(msg.subject, msg.data, msg.metadata.timestamp)
                if not follow and msg.metadata.num_pending == 0:
                    return
        finally:
            # A generator left unfinished is closed late, maybe after the connection.
            if not self.nc.is_closed:
                await sub.unsubscribe()

    async def _namespace_feed(self, filter_subject: str, follow: bool, what: str,
                              when_empty: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[FeedMessage]:
        """The kept feed of a confined client: its namespace's feed stream (a copy that ``nex creds``
        makes), read a message at a time with direct gets, which make no consumer; then, when
        ``follow``, the live subjects (subscribed before the history is read, so nothing falls
        between; a line published during the read may come twice)."""
        js = self.nc.jetstream(timeout=self.timeout)
        stream = subjects.feed_stream(self.namespace)
        try:
            await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            raise NotFound(f"there is no {what} stream for namespace {self.namespace!r} ({stream}): the operator"
                           " makes it with nex creds") from None
        except nats.errors.TimeoutError:
            raise Unavailable(f"no answer from JetStream about {stream}") from None
        live = await self.nc.subscribe(filter_subject) if follow else None
        try:
            seq = 1
            while True:
                try:
                    raw = await js.get_msg(stream, seq=seq, subject=filter_subject, next=True, direct=True)
                except nats.js.errors.NotFoundError:
                    if seq == 1 and when_empty is not None:
                        await when_empty()
                    break  # nothing past seq
                except nats.errors.TimeoutError:
                    raise Unavailable(f"no answer from JetStream about {stream}") from None
                yield FeedMessage(raw.subject or "", raw.data or b"", raw.time or datetime.now().astimezone())
                seq = (raw.seq or seq) + 1
            while live is not None:
                msg = await live.next_msg(timeout=None)
                yield FeedMessage(msg.subject, msg.data, datetime.now().astimezone())
        finally:
            if live is not None and not self.nc.is_closed:
                await live.unsubscribe()


@dataclass(frozen=True)
class FeedMessage:
    """One message of a kept feed, read through a consumer or a direct get."""

    subject: str
    data: bytes
    time: datetime


@dataclass(frozen=True)
class AsyncReceipt:
    """JetStream's acknowledgement of an async invocation: where it is kept, under which key."""

    stream: str
    seq: int
    key: str
    duplicate: bool  # the key was published within the duplicate window: this one was dropped


def _dead_letter(raw: Any) -> DeadLetter:
    headers = raw.headers or {}
    parts = (raw.subject or "").split(".")
    namespace, function = (parts[2], parts[3]) if len(parts) == 4 else ("?", "?")
    try:
        attempts = int(headers.get(subjects.DLQ_ATTEMPTS_HEADER, "0"))
    except ValueError:
        attempts = 0
    return DeadLetter(
        seq=raw.seq or 0, namespace=namespace, function=function,
        subject=headers.get(subjects.DLQ_SUBJECT_HEADER, ""), key=headers.get(subjects.DLQ_KEY_HEADER, ""),
        attempts=attempts, error=headers.get(subjects.DLQ_ERROR_HEADER, ""),
        time=raw.time or datetime.fromtimestamp(0).astimezone(),
        workload_id=headers.get(subjects.DLQ_WORKLOAD_HEADER), reply_to=headers.get(subjects.REPLY_TO_HEADER),
        size=len(raw.data or b""))


def constraints_of(request: DeployRequest) -> AuctionRequest:
    """The auction a deploy request implies: its type, lifecycle and memory limit."""
    return AuctionRequest(type=request.type, lifecycle=request.lifecycle, memory_mib=request.limits.memory_mib)


def _deploy_target(target: str) -> str:
    """A node id, or a bid id (``<node id>.<token>``): one or two subject tokens."""
    if not re.fullmatch(BID_ID_PATTERN, target):
        _target(target, "node or bid id")
    return target


def _deploy_target_not_found(target: str) -> NexError:
    if "." in target:
        return BidNotFound(target)
    return NodeNotFound(target)


def _trace_headers(traceparent: TraceParent | str | None) -> dict[str, str]:
    """The traceparent header of an invocation; BadRequest for one that is not W3C's format."""
    if traceparent is None:
        return {}
    if TraceParent.parse(str(traceparent)) is None:
        raise BadRequest(f"invalid traceparent {str(traceparent)!r}: want 00-<32 hex>-<16 hex>-<2 hex>")
    return {TRACEPARENT: str(traceparent)}


def _decode(msg: Msg, model: type[M], subject: str) -> M:
    error = from_reply(msg.data, msg.headers)
    if error is not None:
        raise error
    try:
        return model.model_validate_json(msg.data)
    except ValidationError as exc:
        raise InternalError(f"unexpected reply to {subject}: {describe_validation_error(exc)}") from None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, ConnectionRefusedError) or "Connect call failed" in text:
        return "connection refused"
    return text or type(exc).__name__
