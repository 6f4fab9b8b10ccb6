"""Subjects of the control API and of the feeds.

Control requests: ``$NEX.SVC.<ns>.control.<VERB>[.<target>]``.
Feeds: ``$NEX.FEED.<ns>.logs.<workload>.<stream>`` and ``$NEX.FEED.<ns>.events.<TYPE>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

SVC_PREFIX = "$NEX.SVC"
FEED_PREFIX = "$NEX.FEED"
DEFAULT_NAMESPACE = "default"

# Tokens that become part of a subject: no dots, no wildcards, no whitespace. The pattern is
# pydantic's too, whose regex ends '$' at the end of the text; Python's '$' also matches
# before a final newline, so Python code matches it with fullmatch only.
TOKEN_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")

PING = "PING"
INFO = "INFO"
DEPLOY = "DEPLOY"
UNDEPLOY = "UNDEPLOY"
WPING = "WPING"
LAMEDUCK = "LAMEDUCK"
AUCTION = "AUCTION"
VERBS = (PING, INFO, AUCTION, DEPLOY, UNDEPLOY, WPING, LAMEDUCK)

LOG_STREAMS = ("stdout", "stderr")


def is_token(value: str) -> bool:
    """Whether ``value`` is one subject token: not empty, no dot, wildcard or whitespace."""
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def check_token(value: str, what: str) -> str:
    """``value``, when it is one subject token; BadRequest naming ``what`` otherwise."""
    if not is_token(value):
        raise ValueError(f"invalid {what} {value!r}: use 1-64 letters, digits, '_' or '-'")
    return value


def control(namespace: str, verb: str, target: str | None = None) -> str:
    """The subject of one control request; ``namespace`` may be ``*`` for a node's subscription."""
    subject = f"{SVC_PREFIX}.{namespace}.control.{verb}"
    return f"{subject}.{target}" if target else subject


def namespace_of(subject: str) -> str:
    """The namespace token of a ``$NEX.SVC`` or ``$NEX.FEED`` subject."""
    parts = subject.split(".")
    if len(parts) < 3 or parts[0] != "$NEX":
        raise ValueError(f"not a Nex subject: {subject!r}")
    return parts[2]


def logs(namespace: str, workload_id: str, stream: str) -> str:
    """The subject of a workload's log lines on ``stream`` (stdout or stderr)."""
    return f"{FEED_PREFIX}.{namespace}.logs.{workload_id}.{stream}"


def logs_filter(namespace: str = "*", workload_id: str = "*") -> str:
    """The filter of the log subjects of a namespace, or of one workload."""
    return f"{FEED_PREFIX}.{namespace}.logs.{workload_id}.*"


def events(namespace: str, event_type: str) -> str:
    """The subject of an event of ``event_type`` in ``namespace``."""
    return f"{FEED_PREFIX}.{namespace}.events.{event_type}"


def events_filter(namespace: str = "*") -> str:
    """The filter of the event subjects of a namespace (of all with ``*``)."""
    return f"{FEED_PREFIX}.{namespace}.events.*"


# JetStream names. The streams keep history for `nex logs` and `nex events`.
LOGS_STREAM = "NEX_LOGS"
EVENTS_STREAM = "NEX_EVENTS"  # activity: function_stats, failed calls, heartbeats (nex.api.events)
AUDIT_STREAM = "NEX_AUDIT"  # security and lifecycle events, out of invocation traffic's reach
ARTIFACT_BUCKET = "NEXCLIFILES"
FEED_STREAM_PREFIX = "NEXFEED"  # + _<ns>: feed_stream

# JetStream KV buckets of the fleet (docs/operations.md).
NODES_BUCKET = "NEX_NODES"  # key <node id>: NodeRecord; the bucket's TTL declares silent nodes gone
APPS_BUCKET = "NEX_APPS"  # key app.<ns>.<name>: AppRecord; key status.<ns>.<name>: AppStatus
FLEET_BUCKET = "NEX_FLEET"  # key fleet: FleetKeysRecord; key node.<node id>: FleetKeysCopy (dev mode's shared keys)
LEASES_BUCKET = "NEX_LEASES"  # key reconciler: ReconcilerLease; the bucket's TTL is the lease time
RECONCILER_LEASE_KEY = "reconciler"
CLAIMS_BUCKET = "NEX_CLAIMS"  # key <jti>: a used claim, written once (create-only) by the node that took it


# Durable async invocation (docs/functions.md, "Triggers"). One work-queue stream per
# function captures its async trigger subjects; one durable pull consumer of the same
# name is shared by every copy of the function. Failures past the retry policy land in
# the dead-letter stream; completed idempotency keys are kept in the done bucket.
FUNCTION_STREAM_PREFIX = "NEXFN"
DLQ_STREAM = "NEX_DLQ"
DLQ_PREFIX = "$NEX.DLQ"
DLQ_COPY_PREFIX = "NEXDLQ"  # + _<ns>: dead_letter_stream
DONE_BUCKET = "NEX_DONE"  # key <ns>.<name>.<base64url of the idempotency key>: the completion record

# Headers of async invocations and of dead letters.
MSG_ID_HEADER = "Nats-Msg-Id"  # the idempotency key (JetStream's own dedupe header)
KEY_HEADER = "Nex-Key"  # the idempotency key when it differs from Nats-Msg-Id (a replayed dead letter)
REPLY_TO_HEADER = "Nex-Reply-To"  # where the function's result (or final error) is published
DLQ_SUBJECT_HEADER = "Nex-Dlq-Subject"  # the trigger subject the invocation was published on
DLQ_KEY_HEADER = "Nex-Dlq-Key"
DLQ_ATTEMPTS_HEADER = "Nex-Dlq-Attempts"
DLQ_ERROR_HEADER = "Nex-Dlq-Error"
DLQ_WORKLOAD_HEADER = "Nex-Dlq-Workload"


def function_stream(namespace: str, name: str) -> str:
    """The work-queue stream (and durable consumer) of one function's async triggers:
    ``NEXFN_<len(ns)>_<ns>_<name>`` (see :func:`scoped_name`)."""
    return scoped_name(FUNCTION_STREAM_PREFIX, namespace, name)


def scoped_name(prefix: str, namespace: str, name: str) -> str:
    """One JetStream name (stream, consumer, bucket) for a (namespace, name) pair, one-to-one.

    Namespaces and names are tokens that may hold ``_``, the only separator a JetStream
    name can hold, so ``<prefix>_<ns>_<name>`` would give namespace ``a_b`` with name ``c``
    and namespace ``a`` with name ``b_c`` the same stream (one tenant would block the
    other's deploy). The namespace's length goes first: ``NEXFN_3_a_b_c`` and
    ``NEXFN_1_a_b_c`` differ, and the pair is read back by taking the number, then that
    many characters, then the rest.

    The other names built from a namespace and a name are one-to-one as they are:
    subjects and keys put a dot between them (``$NEX.DLQ.<ns>.<name>``, the done keys
    ``<ns>.<name>.<key>``, ``app.<ns>.<name>``, queue groups ``nex.<ns>.<name>``),
    and a function's KV and object buckets (``NEXKV_<ns>_<bucket>``,
    ``NEXOBJ_<ns>_<bucket>``, :mod:`nex.agent.hostservices`) take bucket names
    without ``_``, so the last ``_`` ends the namespace. A namespace's artifact
    bucket is :func:`artifact_bucket`.
    """
    return f"{prefix}_{len(namespace)}_{namespace}_{name}"


def feed_stream(namespace: str) -> str:
    """A namespace's copy of its kept feeds (sourced from NEX_LOGS and NEX_EVENTS, filtered to
    ``$NEX.FEED.<ns>.>``): what a client confined to the namespace reads its history from."""
    return f"{FEED_STREAM_PREFIX}_{namespace}"


def bucket_namespace(bucket: str) -> str | None:
    """The namespace that owns an Object Store bucket by its name (its :func:`artifact_bucket`,
    or a function's ``nex.objects`` bucket ``NEXOBJ_<ns>_<bucket>``); None for any other bucket."""
    if bucket == ARTIFACT_BUCKET:
        return DEFAULT_NAMESPACE
    if bucket.startswith(f"{ARTIFACT_BUCKET}_"):
        return bucket.removeprefix(f"{ARTIFACT_BUCKET}_")
    if bucket.startswith("NEXOBJ_") and "_" in bucket.removeprefix("NEXOBJ_"):  # nex.agent.hostservices
        return bucket.removeprefix("NEXOBJ_").rsplit("_", 1)[0]
    return None


def dead_letter_stream(namespace: str) -> str:
    """A namespace's copy of its dead letters (sourced from NEX_DLQ, filtered to
    ``$NEX.DLQ.<ns>.>``): what a client confined to the namespace lists and replays."""
    return f"{DLQ_COPY_PREFIX}_{namespace}"


def artifact_bucket(namespace: str) -> str:
    """The Object Store bucket that ``nex devrun`` and ``nex apply`` upload a namespace's files to.

    One bucket per namespace, so that a namespace's credentials can be confined to its
    own files (NATS permissions name whole buckets; nothing confines a user to some keys
    of one): ``NEXCLIFILES_<ns>``, and ``NEXCLIFILES`` for the default namespace, as
    before namespaces had buckets of their own.
    """
    if namespace == DEFAULT_NAMESPACE:
        return ARTIFACT_BUCKET
    return f"{ARTIFACT_BUCKET}_{namespace}"


HOST_KV_PREFIX = "NEXKV"  # + _<ns>_<bucket>: host_kv_bucket
HOST_OBJECTS_PREFIX = "NEXOBJ"  # + _<ns>_<bucket>: host_object_bucket
_HOST_BUCKET = re.compile(r"[A-Za-z0-9-]{1,64}")


def is_host_bucket(bucket: object) -> bool:
    """A bucket name a function may give ``nex.kv`` or ``nex.objects``: 1 to 64 letters, digits and '-'."""
    return isinstance(bucket, str) and _HOST_BUCKET.fullmatch(bucket) is not None


def host_kv_bucket(namespace: str, bucket: str) -> str:
    """The JetStream KV bucket behind ``nex.kv(bucket)`` in ``namespace`` (the name already checked)."""
    return f"{HOST_KV_PREFIX}_{namespace}_{bucket}"


def host_object_bucket(namespace: str, bucket: str) -> str:
    """The JetStream object store behind ``nex.objects(bucket)`` in ``namespace`` (the name already checked)."""
    return f"{HOST_OBJECTS_PREFIX}_{namespace}_{bucket}"


def dead_letters(namespace: str, name: str) -> str:
    """The subject of the dead letters of the async function ``name``."""
    return f"{DLQ_PREFIX}.{namespace}.{name}"


def dead_letters_filter(namespace: str = "*", name: str = "*") -> str:
    """The filter of the dead-letter subjects of a namespace, or of one function."""
    return f"{DLQ_PREFIX}.{namespace}.{name}"


def app_key(namespace: str, name: str) -> str:
    """The NEX_APPS key of an app's record."""
    return f"app.{namespace}.{name}"


def app_status_key(namespace: str, name: str) -> str:
    """The NEX_APPS key of an app's status, written by the reconciler."""
    return f"status.{namespace}.{name}"


def app_verified_key(namespace: str, name: str) -> str:
    """The last app record the reconciler verified: written by nodes only, read by ``nex apply``."""
    return f"verified.{namespace}.{name}"


# -- the subject rule of workloads (docs/security.md, "What a workload may do") ----------
#
# One rule for every subject a workload uses or that is used on its behalf: its NATS
# credentials (nex.security.natsauth), its triggers, the host services' publish and
# request, the Nex-Reply-To of async calls and the node's nats health checks.

# Subjects no workload may subscribe to, publish on, or have anything published on for it:
# the server's, JetStream's, KV's, the Object Store's, Nex's own, service discovery and
# reply inboxes.
RESERVED_SUBJECTS = ("$SYS.>", "$JS.>", "$KV.>", "$O.>", "$NEX.>", "$SRV.>", "_INBOX.>")
INBOXES = "_INBOX.>"
# What a reply to a request the workload received may still never be sent to: the reserved
# subjects but the inboxes, through which requesters get their answers.
RESERVED_FOR_REPLIES = tuple(r for r in RESERVED_SUBJECTS if r != INBOXES)

APP_PREFIX = "nex"  # nex.<ns>.>: the subjects of one namespace, shared by its workloads
EVERY_NAMESPACE = f"{APP_PREFIX}.*.>"


def app_subjects(namespace: str) -> str:
    """The subject space a namespace's workloads share: ``nex.<ns>.>``."""
    return f"{APP_PREFIX}.{namespace}.>"


def subjects_overlap(a: str, b: str) -> bool:
    """Whether some concrete subject matches both patterns (``*`` and ``>`` on either side):
    the one matcher of subjects. For a subject without wildcards it says whether the other
    pattern matches it.

    ``>`` matches one or more tokens, so ``foo.>`` does not overlap ``foo``.
    """
    left, right = a.split("."), b.split(".")
    for i, (x, y) in enumerate(zip(left, right)):
        if x == ">" or y == ">":
            return True  # the other side has a token here, and '>' takes it and the rest
        if x != y and x != "*" and y != "*":
            return False
    return len(left) == len(right)


def subject_covers(outer: str, inner: str) -> bool:
    """Whether every subject that ``inner`` matches also matches ``outer``."""
    left, right = outer.split("."), inner.split(".")
    for i, x in enumerate(left):
        if x == ">":
            return len(right) > i
        if i >= len(right) or right[i] == ">" or (x != "*" and (right[i] == "*" or x != right[i])):
            return False
    return len(left) == len(right)


MAX_SUBJECT_CHARS = 1024


# A token: no dot, whitespace or NUL, and not a lone '*' or '>'. One regex: it runs for every sync call.
_LITERAL_TOKEN = r"(?![*>](?:\.|$))[^.\s\x00]+"
_LITERAL = re.compile(rf"{_LITERAL_TOKEN}(?:\.{_LITERAL_TOKEN})*")


def is_literal(subject: str) -> bool:
    """A subject one can publish on: dot-separated tokens, no wildcard, no whitespace."""
    return len(subject) <= MAX_SUBJECT_CHARS and _LITERAL.fullmatch(subject) is not None


def pattern_problem(subject: str) -> str | None:
    """Why ``subject`` is not a subject pattern (tokens, ``*`` tokens, a last ``>``), or None."""
    tokens = subject.split(".")
    if not subject or len(subject) > MAX_SUBJECT_CHARS or any(not t or any(c.isspace() or c == "\0" for c in t)
                                                               for t in tokens):
        return "is not a subject"
    if any(">" in t and t != ">" for t in tokens) or ">" in tokens[:-1]:
        return "is not a subject: '>' must be the last token"
    return None


def first_overlap(subject: str, patterns: tuple[str, ...] | list[str]) -> str | None:
    """The first of ``patterns`` that ``subject`` overlaps, or None."""
    head = subject.partition(".")[0]
    if head not in ("*", ">"):  # most subjects: only the patterns that start with their first token
        return next((p for p in patterns if _first_token_meets(head, p) and subjects_overlap(subject, p)), None)
    return next((p for p in patterns if subjects_overlap(subject, p)), None)


def _first_token_meets(head: str, pattern: str) -> bool:
    first = pattern.partition(".")[0]
    return first == head or first in ("*", ">")


def foreign_namespace(namespace: str, subject: str) -> bool:
    """Whether ``subject`` (a pattern or not) reaches ``nex.<B>.>`` for some namespace B other than ``namespace``.

    ``nex.>``, ``nex.*.x``, ``*.victim.>`` and ``>`` all do; ``*.<namespace>.x`` does not.
    """
    return subjects_overlap(subject, EVERY_NAMESPACE) and subject.split(".")[1:2] != [namespace]


def namespace_subject_problem(namespace: str, subject: str,
                              confined: Mapping[str, Sequence[str]] | None = None) -> str | None:
    """Why a workload of ``namespace`` may not subscribe to ``subject`` as a trigger, or None.

    Reserved subjects and other namespaces' ``nex.<B>.>`` are never allowed. ``confined`` is
    the operator's ``namespace_subjects``: when given, a trigger outside ``nex.<namespace>.>``
    must lie within one of the patterns listed for the namespace (none listed: none allowed).
    """
    reserved = first_overlap(subject, RESERVED_SUBJECTS)
    if reserved is not None:
        return f"overlaps {reserved!r}, which workloads may not use"
    if foreign_namespace(namespace, subject):
        return (f"reaches the subjects of other namespaces ({EVERY_NAMESPACE!r}): a workload of namespace"
                f" {namespace!r} uses only {app_subjects(namespace)!r} there")
    if confined is not None and not subject_covers(app_subjects(namespace), subject):
        listed = list(confined.get(namespace, ()))
        if not any(subject_covers(pattern, subject) for pattern in listed):
            where = ", ".join(repr(p) for p in [app_subjects(namespace), *listed])
            return f"is outside the subjects of namespace {namespace!r} ({where}; the node's namespace_subjects)"
    return None


@dataclass(frozen=True, slots=True)
class WorkloadScope:
    """The subjects one workload may use: its namespace's ``nex.<ns>.>`` and its own triggers,
    never a reserved subject. Its NATS credentials grant exactly this, and whatever the node or
    an agent publishes for it (host services, Nex-Reply-To, health checks) is held to it."""

    namespace: str
    triggers: tuple[str, ...] = ()

    @classmethod
    def of(cls, namespace: str, triggers: Iterable[str]) -> WorkloadScope:
        """The scope of a workload of ``namespace`` triggered on ``triggers``."""
        return cls(namespace, tuple(dict.fromkeys(triggers)))

    @property
    def subjects(self) -> tuple[str, ...]:
        """What the workload may publish on and subscribe to (its credentials' allow lists)."""
        return (app_subjects(self.namespace), *(t for t in self.triggers if t != app_subjects(self.namespace)))

    def publish_problem(self, subject: str, who: str = "workload") -> str | None:
        """Why the workload may not publish on ``subject`` (a subject without wildcards), or None;
        ``who`` names the workload in the message."""
        if not is_literal(subject):
            return f"{subject!r} is not a subject one can publish on"
        if first_overlap(subject, RESERVED_SUBJECTS) is not None:
            return f"{subject} is a reserved subject"
        if foreign_namespace(self.namespace, subject):
            return f"{subject} is outside the {who}'s subjects: it belongs to another namespace"
        if not any(subjects_overlap(allowed, subject) for allowed in self.subjects):
            return f"{subject} is outside the {who}'s subjects ({', '.join(self.subjects)})"
        return None

    def may_publish(self, subject: str) -> bool:
        """Whether the workload may publish on ``subject`` (:meth:`publish_problem` says why not)."""
        return self.publish_problem(subject) is None

    def may_subscribe(self, subject: str) -> bool:
        """Whether the workload may receive the messages of ``subject`` (a pattern or not)."""
        if namespace_subject_problem(self.namespace, subject) is not None:
            return False
        return any(subject_covers(allowed, subject) for allowed in self.subjects)

    def may_answer(self, reply: str) -> bool:
        """Whether a reply to a request the workload received may go to ``reply``: as the server's
        allow_responses would let it, but never to a reserved subject of the control plane or
        JetStream, nor into another namespace. Inboxes (``_INBOX.>``) and the caller's own
        subjects are fine: that is where requesters wait for answers."""
        if not reply.startswith("_INBOX.") and (
                first_overlap(reply, RESERVED_FOR_REPLIES) is not None or foreign_namespace(self.namespace, reply)):
            return False
        return is_literal(reply)
