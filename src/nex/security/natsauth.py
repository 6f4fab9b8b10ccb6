"""NATS identities the node mints: its own, for an embedded server in operator mode, and one per workload.

Keys live in the node's state dir (``nats/``, mode 0700; seeds 0600, written once):
an operator, a system account and the application account the node and every
workload connect to. The embedded server gets a config with the operator JWT and a
memory resolver preloaded with both account JWTs. A node on an external
operator-mode server gets only the account seed (or a signing key of it) through
its config, and mints workload users with it.

What a workload may do is :func:`workload_permissions`, what a namespace's client may
do :func:`client_permissions`; docs/security.md explains both.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import nkeys

from nex.api import natsjwt, subjects
from nex.api.errors import BadRequest
from nex.api.models import Trigger
from nex.api.subjects import INBOXES, RESERVED_SUBJECTS, WorkloadScope

AUTH_DIR = "nats"


def inbox_prefix(workload_id: str) -> str:
    """A workload's own reply inbox prefix; clients are told it in NATS_INBOX_PREFIX."""
    return f"_INBOX.{workload_id}"


def workload_permissions(namespace: str, workload_id: str, triggers: list[Trigger]) -> natsjwt.Permissions:
    """The workload's :class:`~nex.api.subjects.WorkloadScope` as NATS permissions, plus its own
    reply inbox to subscribe to and one response to each request it receives."""
    scope = WorkloadScope.of(namespace, (t.subject for t in triggers))
    # Its own inbox is under _INBOX.>: denied as a whole, the inbox would be denied too.
    reserved = [r for r in RESERVED_SUBJECTS if r != INBOXES]
    return natsjwt.Permissions(
        pub_allow=list(scope.subjects), pub_deny=reserved,
        sub_allow=[*scope.subjects, f"{inbox_prefix(workload_id)}.>"], sub_deny=reserved,
        responses=1,
    )


def _seed(path: Path, prefix: int) -> nkeys.KeyPair:
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(nkeys.encode_seed(os.urandom(32), prefix))
    return nkeys.from_seed(path.read_bytes().strip())


def _new_user() -> tuple[str, str]:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return nkeys.from_seed(seed).public_key.decode(), seed.decode()


@dataclass
class AccountSigner:
    """Mints user creds for one account: with its own key or one of its signing keys."""

    key: nkeys.KeyPair
    account: str  # the account's public key (A...)

    @classmethod
    def from_seed_file(cls, path: Path, account: str | None = None) -> AccountSigner:
        key = nkeys.from_seed(Path(path).read_bytes().strip())
        return cls(key, account or key.public_key.decode())

    def mint_user(self, name: str, permissions: natsjwt.Permissions | None = None) -> tuple[str, str]:
        """A new user: its JWT and its seed."""
        public, seed = _new_user()
        issuer_account = self.account if self.account != self.key.public_key.decode() else None
        claims = natsjwt.user_claims(public, name, permissions, issuer_account=issuer_account)
        return natsjwt.encode(claims, self.key), seed

    def mint(self, name: str, permissions: natsjwt.Permissions | None = None) -> str:
        """A creds file's text for a new user."""
        return natsjwt.creds_file(*self.mint_user(name, permissions))


class EmbeddedAuth:
    """Operator, system account and app account of an embedded server, kept in the state dir."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / AUTH_DIR
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.operator = _seed(self.dir / "operator.nk", nkeys.PREFIX_BYTE_OPERATOR)
        self.system = _seed(self.dir / "system.nk", nkeys.PREFIX_BYTE_ACCOUNT)
        self.account = _seed(self.dir / "account.nk", nkeys.PREFIX_BYTE_ACCOUNT)
        self.signer = AccountSigner(self.account, self.account.public_key.decode())

    def server_config(self, store_dir: Path) -> Path:
        """Write the nats-server config (operator mode, memory resolver) and return its path."""
        system = self.system.public_key.decode()
        operator = natsjwt.encode(natsjwt.operator_claims(
            self.operator.public_key.decode(), "nex", system), self.operator)
        accounts = {
            system: natsjwt.encode(natsjwt.account_claims(system, "SYS", jetstream=False), self.operator),
            self.signer.account: natsjwt.encode(
                natsjwt.account_claims(self.signer.account, "NEX"), self.operator),
        }
        preload = "\n".join(f"  {key}: {json.dumps(token)}" for key, token in accounts.items())
        text = (f"operator: {json.dumps(operator)}\nsystem_account: {system}\n"
                f"jetstream {{ store_dir: {json.dumps(str(store_dir))} }}\n"
                f"resolver: MEMORY\nresolver_preload: {{\n{preload}\n}}\n")
        path = self.dir / "server.conf"
        write_private(path, text)
        return path

    def node_creds(self, name: str) -> Path:
        """The node's own user: every subject of the app account."""
        path = self.dir / "node.creds"
        write_private(path, self.signer.mint(name))
        return path


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text``, created with ``mode`` (never readable by others meanwhile)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


class ScopedWorkload(Protocol):
    """What a workload's NATS user is minted from; a runtime's ``WorkloadSpec`` is one (this
    module sits below the runtimes and names none of them)."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def namespace(self) -> str: ...

    @property
    def triggers(self) -> list[Trigger]: ...


@dataclass
class WorkloadCredentials:
    """Gives each workload its own NATS user, scoped by :func:`workload_permissions`.

    A plain process gets a creds file (mode 0400) in its working dir and its path in
    ``NATS_CREDS``; a container gets the JWT and seed in ``NATS_JWT`` and
    ``NATS_NKEY_SEED`` (its environment reaches it the way sealed env values do).
    Both get ``NATS_URL`` and ``NATS_INBOX_PREFIX``. The deploy's env cannot override them.
    """

    signer: AccountSigner
    servers: list[str]

    def _user(self, spec: ScopedWorkload) -> tuple[str, str]:
        return self.signer.mint_user(f"{spec.namespace}.{spec.name}.{spec.id}",
                                     workload_permissions(spec.namespace, spec.id, spec.triggers))

    def _common(self, spec: ScopedWorkload) -> dict[str, str]:
        return {"NATS_URL": ",".join(self.servers), "NATS_INBOX_PREFIX": inbox_prefix(spec.id)}

    def file_environment(self, spec: ScopedWorkload, path: Path) -> dict[str, str]:
        """Write the workload's creds file at ``path`` and return its environment."""
        write_private(path, natsjwt.creds_file(*self._user(spec)), mode=0o400)
        return {**self._common(spec), "NATS_CREDS": str(path)}

    def inline_environment(self, spec: ScopedWorkload) -> dict[str, str]:
        jwt, seed = self._user(spec)
        return {**self._common(spec), "NATS_JWT": jwt, "NATS_NKEY_SEED": seed}


# -- namespace clients ---------------------------------------------------------------------

# What only nodes (and their agents) write: the completion records of async invocations,
# the fleet's buckets, and the feeds. NEX_CLAIMS is the fleet-wide replay memory of claims.
NODE_ONLY_BUCKETS = (subjects.DONE_BUCKET, subjects.NODES_BUCKET, subjects.LEASES_BUCKET, subjects.CLAIMS_BUCKET,
                     subjects.FLEET_BUCKET)
NODE_ONLY_SUBJECTS = (
    *(f"$KV.{bucket}.>" for bucket in NODE_ONLY_BUCKETS),
    f"$KV.{subjects.APPS_BUCKET}.status.>",  # app status: the reconciler's
    f"$KV.{subjects.APPS_BUCKET}.verified.>",  # the last verified record of each app: the reconciler's
    f"{subjects.FEED_PREFIX}.>",
)
_JS_API = "$JS.API"


def _checked_bucket(bucket: str) -> str:
    if not subjects.is_host_bucket(bucket):
        raise BadRequest(f"invalid bucket name {bucket!r}: use 1 to 64 letters, digits and '-'")
    return bucket


def client_inbox_prefix(user_public: str) -> str:
    """A namespace client's own reply inbox prefix: its user key, so no two clients share one.

    nex.connection finds it in the creds' JWT, so the ``nex`` CLI needs no option for it."""
    return f"_INBOX.{user_public}"


def _stream_reads(stream: str) -> list[str]:
    """Reading the whole of one stream of the namespace's own, by message gets: no consumer
    (see :func:`client_permissions`)."""
    return [f"{_JS_API}.STREAM.INFO.{stream}", f"{_JS_API}.STREAM.MSG.GET.{stream}",
            f"{_JS_API}.DIRECT.GET.{stream}", f"{_JS_API}.DIRECT.GET.{stream}.>"]


def client_permissions(namespace: str, user_public: str, app_subjects_extra: list[str] | tuple[str, ...] = (),
                       kv_buckets: list[str] | tuple[str, ...] = ()) -> natsjwt.Permissions:
    """What a client of ``namespace`` may do: what the ``nex`` CLI does in its namespace, nothing
    in another's, and no write that only nodes make (:data:`NODE_ONLY_SUBJECTS`).

    - control requests ``$NEX.SVC.<ns>.>``, the replies on its own inbox (:func:`client_inbox_prefix`);
    - its app subjects ``nex.<ns>.>`` and ``app_subjects_extra`` (vetted by the caller), to
      invoke functions (async ones too: a JetStream publish is a plain publish), publish, subscribe;
    - its feeds: live (``$NEX.FEED.<ns>.>``), and kept in its namespace's feed stream
      (:func:`nex.api.subjects.feed_stream`), read by direct gets;
    - its dead letters, in its namespace's copy (:func:`nex.api.subjects.dead_letter_stream`):
      read, and deleted once replayed;
    - its artifact bucket (:func:`nex.api.subjects.artifact_bucket`): upload, look up, purge;
    - its functions' KV buckets named in ``kv_buckets``: get, put, delete;
    - its app records ``app.<ns>.<name>`` in NEX_APPS, and their status and last verified
      record (read only);
    - the node registry NEX_NODES, read only (what PING tells anyone).

    Never a consumer. JetStream delivers a push consumer's messages on whatever deliver subject
    the request names, with the server's rights, not the user's: a user that may create one
    consumer, even on its own stream, can publish into every subject of the account. Reads are
    direct gets, whose subject names the stream. Nor a stream: its subjects, in the request's
    body, could capture another namespace's traffic. JetStream names are single subject
    tokens, so a permission names a bucket, never "every bucket of the namespace".
    """
    ns = namespace
    apps = subjects.APPS_BUCKET
    files = subjects.artifact_bucket(ns)
    app_space = [subjects.app_subjects(ns), *dict.fromkeys(app_subjects_extra)]
    kv_streams = [subjects.host_kv_bucket(ns, _checked_bucket(bucket)) for bucket in dict.fromkeys(kv_buckets)]
    publish = [
        f"{subjects.SVC_PREFIX}.{ns}.>", *app_space,
        *_stream_reads(subjects.feed_stream(ns)),
        *_stream_reads(subjects.dead_letter_stream(ns)), f"{_JS_API}.STREAM.MSG.DELETE.{subjects.dead_letter_stream(ns)}",
        f"{_JS_API}.STREAM.INFO.KV_{subjects.NODES_BUCKET}", f"{_JS_API}.DIRECT.GET.KV_{subjects.NODES_BUCKET}.>",
        f"{_JS_API}.STREAM.INFO.KV_{apps}", f"$KV.{apps}.{subjects.app_key(ns, '*')}",
        *(f"{_JS_API}.DIRECT.GET.KV_{apps}.$KV.{apps}.{key}"
          for key in (subjects.app_key(ns, "*"), subjects.app_status_key(ns, "*"),
                      subjects.app_verified_key(ns, "*"))),
        *_stream_reads(f"OBJ_{files}"), f"{_JS_API}.STREAM.PURGE.OBJ_{files}", f"$O.{files}.>",
        *(right for bucket in kv_streams for right in (*_stream_reads(f"KV_{bucket}"), f"$KV.{bucket}.>")),
    ]
    return natsjwt.Permissions(
        pub_allow=publish, pub_deny=list(NODE_ONLY_SUBJECTS),
        sub_allow=[f"{client_inbox_prefix(user_public)}.>", *app_space, f"{subjects.FEED_PREFIX}.{ns}.>"],
        sub_deny=["$SYS.>"],
    )


def check_client_subject(namespace: str, subject: str) -> str:
    """An extra app subject for a namespace's client: a valid subject outside every reserved
    subject and outside ``nex.>`` (its own ``nex.<ns>.>`` it has already). ValueError otherwise."""
    tokens = subject.split(".")
    if not subject or "" in tokens or any(c.isspace() for c in subject) or (">" in tokens[:-1]):
        raise ValueError(f"invalid subject {subject!r}")
    clash = subjects.first_overlap(subject, [*subjects.RESERVED_SUBJECTS, "nex.>"])
    if clash is not None:
        raise ValueError(f"subject {subject!r} overlaps {clash}: not a namespace's to use")
    return subject


def mint_client(signer: AccountSigner, namespace: str, name: str | None = None,
                app_subjects_extra: list[str] | tuple[str, ...] = (),
                kv_buckets: list[str] | tuple[str, ...] = ()) -> str:
    """A creds file's text for a new client of ``namespace`` (:func:`client_permissions`)."""
    subjects.check_token(namespace, "namespace")
    extra = [check_client_subject(namespace, s) for s in app_subjects_extra]
    public, seed = _new_user()
    permissions = client_permissions(namespace, public, extra, kv_buckets)
    issuer_account = signer.account if signer.account != signer.key.public_key.decode() else None
    claims = natsjwt.user_claims(public, name or f"nex client {namespace}", permissions,
                                 issuer_account=issuer_account)
    return natsjwt.creds_file(natsjwt.encode(claims, signer.key), seed)
