"""The node daemon: ties NATS, identity, supervisor, control service and feeds together."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from nats.aio.client import Client
from nats.errors import Error as NatsError

from nex import API_VERSION, __version__
from nex.api.errors import BadRequest, ForbiddenTrigger
from nex.api.events import EventType
from nex.api import subjects
from nex.api.paging import fill_page
from nex.api.subjects import first_overlap, namespace_subject_problem
from nex.api.models import (
    AppRef, AuctionReply, AuctionRequest, DeployRequest, LameDuckResponse, Lifecycle, NodeInfo, NodePing, NodeState, UndeployRequest,
    node_isolation, PageRequest, UndeployResponse, WorkloadPing,
)
from nex.api.records import NodeRecord
from nex.artifact_roots import ArtifactRoots
from nex.artifacts import ArtifactCache, parse_nats_uri
from nex.fleet.reconciler import Reconciler, fleet_keys
from nex.fleet.sharedkeys import SharedFleetKeys
from nex.api.appverify import Trust
from nex.jsreplicas import fleet_replicas, warn_fewer_replicas
from nex.connection import ConnectOptions, connect
from nex.natsserver import DEFAULT_HOST, NatsServer, PortTaken, port_in_use
from nex.node import identity
from nex.node.bids import BidBook, BidTicket
from nex.node.config import NodeConfig
from nex.node.control import ControlService
from nex.node.feeds import AuditRetention, Feeds
from nex.ratelimit import TokenBucket
from nex.node.metrics import MetricsServer
from nex.node.registry import NodeRegistry
from nex.node.resources import automatic_tags, resources
from nex.node.sandboxing import TIER_TAGS, choose_sandbox, sweep_containers
from nex.node.statedir import make_private
from nex.node.statelock import StateDirLock
from nex.node.supervisor import Supervisor
from nex.node.workloads import Workload
from nex.placement.scoring import Bidder
from nex.api.claims import SignedRequest
from nex.api.errors import NotBidder
from nex.security.apps import AppDeployCheck
from nex.security.claims import ClaimPolicy
from nex.security.ledger import ClaimLedger
from nex.security.keystore import NODE_XKEY_FILE, UserKeys, load_or_create_xkey
from nex.security.natsauth import AccountSigner, EmbeddedAuth, WorkloadCredentials
from nex.security.xkeys import open_env
from nex.reaper import Reaper
from nex.agent.protocol import HostSettings
from nex.runtimes.base import RuntimeContext
from nex.runtimes.registry import available_runtimes
from nex.sandbox.runner import OciRunner

log = logging.getLogger(__name__)

R = TypeVar("R", NodeInfo, WorkloadPing)


def connect_options(config: NodeConfig, server_url: str) -> ConnectOptions:
    return ConnectOptions.from_url(
        server_url, creds=config.creds, user=config.user, password=config.password,
        nkey_seed_file=config.nkey, tls_cert=config.tls_cert, tls_key=config.tls_key,
        tls_ca=config.tls_ca,
    )


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir
        # First, before anything reads or writes the state dir: it is this node's alone until it stops.
        self.state_lock = StateDirLock.acquire(self.state_dir)
        try:
            make_private(self.state_dir)
            self.keys = identity.load_or_create(self.state_dir)
            self.xkey = load_or_create_xkey(self.state_dir / NODE_XKEY_FILE)
        except BaseException:
            self.state_lock.release()
            raise
        self.node_id = identity.node_id(self.keys)
        self._rejections = TokenBucket(config.rejection_events_per_s, config.rejection_events_burst)
        self.claims = ClaimPolicy(config.trusted_issuers, config.admin_issuers)
        self.ledger: ClaimLedger | None = None  # the fleet's used claim ids (NEX_CLAIMS)
        self.app_checks = AppDeployCheck(config.trusted_issuers, config.admin_issuers)
        self.name = config.name or f"node-{self.node_id[:8].lower()}"
        self.tags = {**automatic_tags(), **config.tags}
        self.state = NodeState.RUNNING
        self.started = time.monotonic()
        self.embedded: NatsServer | None = None
        self.server_url = config.server
        self.nc: Client | None = None
        self.supervisor: Supervisor | None = None
        self.control: ControlService | None = None
        self.feeds: Feeds | None = None
        self._stop = asyncio.Event()
        self._lameduck_task: asyncio.Task | None = None
        self._warming: asyncio.Task | None = None  # the function agents starting with the node
        self._workloads_changed_event = asyncio.Event()  # wakes the lame duck drain
        self.registry: NodeRegistry | None = None
        self.reaper: Reaper | None = None
        self.oci: OciRunner | None = None
        self.embedded_auth: EmbeddedAuth | None = None
        self.credentials: WorkloadCredentials | None = None  # per-workload NATS users; None: no auth
        self.bids: BidBook | None = None
        self.reconciler: Reconciler | None = None
        self.metrics: MetricsServer | None = None
        self.replicas = self.config.replicas or 1  # decided at start (nex.jsreplicas)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self.server_url is None and self.config.port and port_in_use(DEFAULT_HOST, self.config.port):
            # Said now, not by the embedded server once the sandbox probe and the rest are done.
            raise PortTaken(DEFAULT_HOST, self.config.port)
        if self.config.metrics_port is not None:  # first: a port in use stops the node before it did anything
            metrics = MetricsServer(self, self.config.metrics_host, self.config.metrics_port)
            await metrics.start()
            self.metrics = metrics
        self.reaper = Reaper()
        self.oci, sandbox_tags = await choose_sandbox(self.config.sandbox, self.state_dir, self.reaper,
                                                      self.config.gvisor_platform)
        # The tier's tags are the node's word alone: a config tag cannot claim a stronger one.
        for tag in TIER_TAGS:
            self.tags.pop(tag, None)
        self.tags.update(sandbox_tags)
        signer: AccountSigner | None = None
        if self.config.auth and self.server_url is not None:
            log.warning("--auth starts the embedded server with authentication; with --server it does "
                        "nothing (give --account-seed to mint workload credentials)")
        if self.server_url is None:
            signer = await self._start_embedded()
        elif self.config.account_seed:
            signer = AccountSigner.from_seed_file(Path(self.config.account_seed), self.config.account)
        options = connect_options(self.config, self.server_url)
        if self.embedded is not None and signer is not None:
            options = replace(options, creds=str(self.embedded_auth.node_creds(f"nex-node {self.name}")))
        self.nc = await connect(options.with_name(f"nex-node {self.name}"))
        await self._decide_replicas()
        self.feeds = Feeds(self.nc, self.node_id, replicas=self.replicas)
        await self.feeds.ensure_streams(self.config.logs_stream_bytes, self.config.events_stream_bytes,
                                        audit=AuditRetention(self.config.audit_stream_bytes,
                                                             self.config.audit_max_age_s))
        self.ledger = ClaimLedger(self.nc, self.node_id, replicas=self.replicas)
        await self.ledger.ensure()
        self.credentials = WorkloadCredentials(signer, options.servers) if signer is not None else None
        context = RuntimeContext(node_id=self.node_id, state_dir=self.state_dir,
                                 connect_options=options, guard=self.reaper, oci=self.oci,
                                 credentials=self.credentials, host_settings=HostSettings(
                                     replicas=self.replicas, http_allow_hosts=self.config.http_allow_hosts,
                                     http_allow_methods=self.config.http_allow_methods,
                                     max_hops=self.config.max_hops,
                                     otel_endpoint=self.config.otel_endpoint,
                                     stats_interval_s=self.config.function_stats_interval_s,
                                     live_call_events=self.config.live_call_events,
                                     failure_events_per_s=self.config.failure_events_per_s,
                                     failure_events_burst=self.config.failure_events_burst,
                                     colocate_calls=self.config.colocate_calls),
                                 image_budget_bytes=self.config.image_disk_budget_bytes)
        self.supervisor = Supervisor(
            self.node_id, self.state_dir, available_runtimes(context),
            ArtifactCache(self.state_dir / "artifacts", self.nc.jetstream(), ArtifactRoots(self.config.artifact_roots),
                          self.config.max_artifact_bytes), self.feeds,
            on_removed=self._workload_removed, nc=self.nc, on_changed=self._workloads_changed,
            isolation=node_isolation(self.tags),
        )
        swept = await self.supervisor.sweep_leftovers()
        if swept:
            log.warning("cleaned up %d workload(s) left by a previous node that did not stop", swept)
        containers = await sweep_containers(self.oci, self.state_dir)
        if containers:
            log.warning("removed %d container(s) left by a previous node: %s", len(containers), ", ".join(containers))
        if self.config.reconciler:  # made before the node answers, so its first PING says whether it reconciles
            self.reconciler = self._make_reconciler()
        self.control = ControlService(self.nc, self, on_rejected=self._request_rejected)
        self.bids = BidBook(self.nc, self.node_id, self.config.bid_ttl_s, self.control.serve_bid_deploy,
                            hold_limit_mib=self.config.bid_hold_limit_mib)
        await self.bids.start()
        await self.control.start()
        self.registry = NodeRegistry(
            self.nc, self.node_id, self._registry_record, interval_s=self.config.registry_interval_s,
            ttl_s=self.config.node_timeout_s, replicas=self.replicas)
        await self.registry.start()
        self.feeds.node_event(EventType.NODE_STARTED, self._ping_data())
        await self.nc.flush()
        log.info("node %s (%s) is up; node id %s, xkey %s", self.name, __version__, self.node_id, self.xkey.public)
        if self.claims.dev_mode:
            log.warning("DEV MODE: no trusted issuer is configured, so this node runs UNSIGNED deploys "
                        "from anyone who can publish on $NEX.SVC.>; give --trusted-issuer to close it")
        else:
            log.info("trusting %d issuer(s), %d of them admin", len(self.claims.trusted), len(self.claims.admins))
        if self.reconciler is not None:
            self.reconciler.start()
        if self.config.warm_agents:  # in the background: the node answers meanwhile
            self._warming = asyncio.create_task(self.supervisor.warm_agents(), name="warm agents")

    async def _decide_replicas(self) -> None:
        """The replicas of every stream and bucket this node creates, decided once (nex.jsreplicas)."""
        self.replicas = await fleet_replicas(self.nc, self.config.replicas)
        how = "as configured" if self.config.replicas is not None else "min(3, what the JetStream cluster can hold)"
        log.info("JetStream: the streams and buckets this node creates get %d replica%s (%s)",
                 self.replicas, "" if self.replicas == 1 else "s", how)
        await warn_fewer_replicas(self.nc.jetstream(timeout=5.0), self.replicas)

    def _make_reconciler(self) -> Reconciler | None:
        """This node's candidate for the fleet's reconciler lease (nex.fleet.reconciler)."""
        own = self.state_dir / "fleet"
        keys: UserKeys | None = None
        shared: SharedFleetKeys | None = None
        if self.config.fleet_keys is None and self.claims.dev_mode:
            # No fleet keys given: the nodes share one set through NEX_FLEET, so that whichever
            # reconciles next opens the apps' env and may stop the replicas the last one placed.
            offer = fleet_keys(own)  # the fleet's, should this node be the first to stand
            shared = SharedFleetKeys(self.nc, self.node_id, self.xkey, lambda: offer, replicas=self.replicas)
        else:
            keys = fleet_keys(self.config.fleet_keys or own)
            if not self.claims.dev_mode and keys.issuer_public not in self.claims.trusted:
                # Nodes that trust what this node trusts would refuse every deploy it signs.
                log.warning(
                    "this node does not stand for the reconciler lease: its fleet key (issuer %s, in %s) is not "
                    "one of its trusted issuers, so the fleet's nodes would refuse its deploys. Give every "
                    "reconciling node the fleet's key directory (--fleet-keys) and trust its issuer "
                    "(--trusted-issuer), or start it with --no-reconciler", keys.issuer_public,
                    self.config.fleet_keys or own)
                return None
        return Reconciler(
            self.nc, self.node_id, self.name, keys, self.feeds.event, interval_s=self.config.reconcile_interval_s,
            lease_s=self.config.lease_s, replicas=self.replicas,
            registry_interval_s=self.config.registry_interval_s, sample_threshold=self.config.sample_threshold,
            trust=Trust.of(self.config.trusted_issuers, self.config.admin_issuers), shared=shared,
            on_keys=self._fleet_keys_known)

    def _fleet_keys_known(self, keys: UserKeys) -> None:
        self.app_checks.fleet_issuer = keys.issuer_public

    async def _start_embedded(self) -> AccountSigner | None:
        """Start the embedded server; with ``auth``, in operator mode, returning the account's signer."""
        store = self.state_dir / "jetstream"
        if not self.config.auth:
            self.embedded = NatsServer(store_dir=store, port=self.config.port)
        else:
            self.embedded_auth = EmbeddedAuth(self.state_dir)
            conf = self.embedded_auth.server_config(store)
            self.embedded = NatsServer(store_dir=store, port=self.config.port, jetstream=False,
                                       extra_args=["-c", str(conf)])
        await self.embedded.start()
        self.server_url = self.embedded.url
        log.info("embedded nats-server with JetStream listening on %s%s", self.server_url,
                 " (operator mode: every client needs credentials)" if self.config.auth else "")
        return self.embedded_auth.signer if self.config.auth else None

    async def run(self) -> None:
        """Start, serve until SIGINT/SIGTERM or lame duck, then stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self.start()
            heartbeat = asyncio.create_task(self._heartbeat())
            await self._stop.wait()
            heartbeat.cancel()
        finally:
            await self.shutdown()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def request_stop(self) -> None:
        self._stop.set()

    async def shutdown(self) -> None:
        """Stop every workload, say so, drain, stop the embedded server, and let the state dir go."""
        if self.reconciler is not None:
            await self.reconciler.stop()  # first: hand the lease over before anything else stops
        self.state = NodeState.STOPPING
        if self.bids is not None:
            await self.bids.close()
        if self.registry is not None and self.nc.is_connected:
            await self.registry.write_now()  # the fleet may start replacements while these stop
        if self._warming is not None:
            self._warming.cancel()  # an agent still starting is stopped by its start
            await asyncio.wait({self._warming})
        if self.supervisor is not None:
            await self.supervisor.stop_all(self.config.stop_grace_s)
            await self.supervisor.close()
        if self.registry is not None:
            await self.registry.stop()
        if self.reaper is not None:
            self.reaper.close()
        if self.oci is not None:
            self.oci.close()
        if self.nc is not None:
            await self._leave_nats()
        if self.embedded is not None:
            await self.embedded.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        if self.nc is not None:
            log.info("node %s stopped", self.name)
        self.state_lock.release()  # last: nothing of this node touches the state dir any more

    async def _leave_nats(self) -> None:
        """Say goodbye and drain; with NATS gone (it may have stopped first), just close."""
        if not self.nc.is_connected:
            await self.nc.close()
            return
        try:
            if self.control is not None:
                await self.control.stop()
            if self.supervisor is not None:  # (a node that failed to start never said it started)
                self.feeds.node_event(EventType.NODE_STOPPED, self._ping_data())
            await self.nc.flush(timeout=2)
            await self.nc.drain()
        except (NatsError, asyncio.TimeoutError) as exc:
            log.warning("NATS went away while the node stopped: %s", exc)
            await self.nc.close()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            self.feeds.node_event(EventType.HEARTBEAT, self._ping_data())

    # -- what the control service asks ---------------------------------------------

    def ping(self, namespace: str) -> NodePing:
        return NodePing(
            node_id=self.node_id, name=self.name, version=__version__, api_version=API_VERSION,
            uptime_s=round(time.monotonic() - self.started, 3), state=self.state, tags=self.tags,
            xkey=self.xkey.public, dev_mode=self.claims.dev_mode, reconciles=self.reconciler is not None,
            workload_count=len([w for w in self.supervisor.table.active() if w.namespace == namespace]),
        )

    def _ping_data(self) -> dict:
        return self.ping("system").model_dump(mode="json", exclude={"workload_count"}) | {
            "workload_count": self.supervisor.table.active_count() if self.supervisor else 0,
        }

    def info(self, namespace: str, page: PageRequest | None = None, max_bytes: int | None = None) -> NodeInfo:
        """The node and one page of the namespace's workloads (nex.api.paging)."""
        reply = NodeInfo(**self.ping(namespace).model_dump(), resources=resources(),
                         runtimes=self.supervisor.runtime_types, workloads=[])
        return self._page(reply, namespace, page, max_bytes)

    def _page(self, reply: R, namespace: str, page: PageRequest | None, max_bytes: int | None) -> R:
        page = page or PageRequest()
        found = sorted((w for w in self.supervisor.table.in_namespace(namespace)
                        if page.after is None or w.id > page.after), key=lambda w: w.id)
        # Summarised as the page takes them: the usage of a workload beyond it is not read.
        summaries = (self.supervisor.refresh(w).summary() for w in found)
        if max_bytes is None:
            return reply.model_copy(update={"workloads": list(summaries)[:page.limit]})
        return fill_page(reply, summaries, max_bytes, page.limit)

    def functions(self) -> list[Workload]:
        if self.supervisor is None:
            return []
        return [self.supervisor.refresh(w) for w in self.supervisor.table.active()
                if w.request.lifecycle == Lifecycle.FUNCTION]

    def workload_ping(self, namespace: str, workload_id: str | None, page: PageRequest | None = None,
                      max_bytes: int | None = None) -> WorkloadPing:
        """One workload, or (``workload_id`` None) one page of the namespace's."""
        if workload_id is None:
            return self._page(WorkloadPing(node_id=self.node_id, workloads=[]), namespace, page, max_bytes)
        workload = self.supervisor.table.get(workload_id, namespace)
        return WorkloadPing(node_id=self.node_id, workloads=[self.supervisor.refresh(workload).summary()])

    async def deploy(self, namespace: str, request: DeployRequest, signed: SignedRequest,
                     bid: BidTicket | None = None) -> Workload:
        """Check everything the request can be checked for, use its claim (once in the fleet) and
        its bid, then start the workload."""
        for trigger in request.triggers:
            denied = first_overlap(trigger.subject, self.config.deny_triggers)
            if denied is not None:
                raise ForbiddenTrigger(trigger.subject, denied)
            problem = namespace_subject_problem(namespace, trigger.subject, self.config.namespace_subjects)
            if problem is not None:
                raise ForbiddenTrigger(trigger.subject, problem=problem)
        check_artifact_bucket(namespace, request.artifact.uri)
        if request.env and not self.claims.dev_mode:
            raise BadRequest("this node takes no plain env: seal it to the node's xkey (sealed_env)")
        claim = self.claims.verify(signed)
        if bid is not None and bid.issuer is not None and (claim is None or claim.iss != bid.issuer):
            raise NotBidder(bid.bid_id)
        issuer = claim.iss if claim is not None else None
        opened = self._opened(request)  # a sealed env that does not open is refused before the claim is used
        self.app_checks.check(namespace, request, issuer, opened.env.keys())
        if request.app is not None:
            # Checked: the registry and the summaries list the app and revision only, not the token.
            opened = opened.model_copy(update={"app": AppRef(name=request.app.name, revision=request.app.revision)})
        if claim is not None:
            await self.ledger.use(claim)
        if bid is not None:
            bid.use()
        workload = await self.supervisor.deploy(namespace, opened)
        workload.issuer = issuer
        await self.control.watch_workload(workload)
        return workload

    def _opened(self, request: DeployRequest) -> DeployRequest:
        """The request with its sealed env opened into ``env``: kept in memory only, never on disk."""
        update: dict[str, object] = {"sealed_env": None, "sender_xkey": None}
        if request.sealed_env is not None:
            update["env"] = {**request.env, **open_env(request.sealed_env, request.sender_xkey, self.xkey)}
        return request.model_copy(update=update)

    async def undeploy(self, namespace: str, workload_id: str, request: UndeployRequest,
                       signed: SignedRequest) -> UndeployResponse:
        owner = self.supervisor.table.get(workload_id, namespace).issuer
        claim = self.claims.verify(signed)
        self.claims.check_stop(claim, workload_id, owner)
        if claim is not None:
            await self.ledger.use(claim)
        grace = self.config.stop_grace_s if request.grace_ms is None else request.grace_ms / 1000
        workload = await self.supervisor.undeploy(namespace, workload_id, grace)
        return UndeployResponse(id=workload.id, node_id=self.node_id, state=workload.state,
                                exit=workload.exit.info() if workload.exit else None)

    async def auction(self, namespace: str, request: AuctionRequest, signed: SignedRequest) -> AuctionReply:
        """A bid for the workload, or why this node declines (nex.node.bids). A signed auction is
        checked like any request, but its claim is not used up: every node gets the same one.
        Unsigned, on a node that trusts issuers, the bid holds nothing."""
        claim = self.claims.verify(signed, required=False)
        return await self.bids.auction(namespace, request, Bidder(
            node_id=self.node_id, name=self.name, state=self.state, tags=self.tags, xkey=self.xkey.public,
            runtimes=frozenset(self.supervisor.runtime_types), workload_count=self.supervisor.table.active_count(),
        ), issuer=claim.iss if claim is not None else None, holds=claim is not None or self.claims.dev_mode)

    async def lameduck(self, signed: SignedRequest | None = None) -> LameDuckResponse:
        """Stop taking work and say so in the registry at once, so that the fleet's reconciler moves
        this node's app replicas; exit once they are gone, or after the lame duck period.
        ``signed``: the LAMEDUCK request (None: asked from inside this process); on a node that
        trusts issuers, only an admin issuer's claim may ask."""
        if signed is not None:
            claim = self.claims.verify(signed)
            self.claims.check_admin(claim, "LAMEDUCK")
            if claim is not None:
                await self.ledger.use(claim)
        if self.state == NodeState.RUNNING:
            self.state = NodeState.LAMEDUCK
            self.supervisor.accepting = False
            self.feeds.node_event(EventType.NODE_LAMEDUCK, self._ping_data())
            self._lameduck_task = asyncio.create_task(self._leave_when_drained(self.config.lameduck_s))
            await self.registry.write_now()
        return LameDuckResponse(node_id=self.node_id, state=self.state)

    def _app_replicas(self) -> list[Workload]:
        return [w for w in self.supervisor.table.active() if w.request.app is not None]

    async def _leave_when_drained(self, seconds: float) -> None:
        """With app replicas at lame duck time: leave when none is left (the reconciler undeploys
        them once their replacements run), at the latest after ``seconds``. Without: after ``seconds``."""
        try:
            if self._app_replicas():
                await asyncio.wait_for(self._drained(), seconds)
            else:
                await asyncio.sleep(seconds)
        except asyncio.TimeoutError:
            log.warning("lame duck period over with %d app replica(s) still here: stopping them",
                        len(self._app_replicas()))
        self._stop.set()

    async def _drained(self) -> None:
        while self._app_replicas():
            self._workloads_changed_event.clear()
            await self._workloads_changed_event.wait()
        log.info("lame duck: every app replica moved away, leaving")

    def _workloads_changed(self) -> None:
        self._workloads_changed_event.set()
        if self.registry is not None:
            self.registry.changed()

    def _registry_record(self, seq: int) -> NodeRecord:
        ping = self.ping("system").model_copy(update={"workload_count": self.supervisor.table.active_count()})
        return NodeRecord(node=ping, resources=resources(), runtimes=self.supervisor.runtime_types,
                          workloads=self.supervisor.app_records(), seq=seq)

    def _request_rejected(self, namespace: str, record: dict) -> None:
        # Whoever may publish on $NEX.SVC.> can have every request refused: bounded, so that a flood of
        # refusals cannot push the rest of the audit trail out at the rate it is sent (nex.ratelimit).
        if not self._rejections.allow():
            if self._rejections.dropped == 1:  # once a flood: the record that follows it says how many
                log.warning("refused control requests come faster than %g a second: the audit trail records "
                            "the next one with the count of those it left out", self.config.rejection_events_per_s)
            return
        dropped = self._rejections.take_dropped()
        if dropped:
            record = {**record, "dropped_before": dropped}
        self.feeds.event(namespace, EventType.REQUEST_REJECTED, record)

    def _workload_removed(self, workload: Workload) -> None:
        if self.control is not None:
            asyncio.get_running_loop().create_task(self.control.unwatch_workload(workload))


def check_artifact_bucket(namespace: str, uri: str) -> None:
    """A deploy reads no other namespace's files: the node fetches with its own rights, which
    reach every bucket, so a namespace's credentials alone would not stop it."""
    if not uri.startswith("nats://"):
        return
    bucket, _ = parse_nats_uri(uri)
    owner = subjects.bucket_namespace(bucket)
    if owner is not None and owner != namespace:
        raise BadRequest(f"artifact bucket {bucket} belongs to namespace {owner!r}, not to {namespace!r}")
