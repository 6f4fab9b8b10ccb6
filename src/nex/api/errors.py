"""One error hierarchy, with typed fields, and its wire form.

A node turns a :class:`NexError` into a reply in exactly one place
(``nex.node.control``); the client turns a reply back into the same class with
:func:`from_reply`. The wire form is a JSON body ``{"error": {"code", "message"}}``
plus the NATS micro headers ``Nats-Service-Error-Code`` and ``Nats-Service-Error``.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

ERROR_CODE_HEADER = "Nats-Service-Error-Code"
ERROR_HEADER = "Nats-Service-Error"


class NexError(Exception):
    """A failure with a wire code. Subclasses fix the code.

    ``message`` says what went wrong, in one line; ``hint``, when a subclass has one, what to do next,
    for the person reading it (the CLI prints it on the line below; it is not part of the wire form)."""

    code = 500
    hint: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, Any]:
        """The JSON body of this error's reply: ``{"error": {"code", "message"}}``."""
        return {"error": {"code": self.code, "message": self.message}}

    def encode(self) -> tuple[bytes, dict[str, str]]:
        """The reply payload and headers for this error."""
        headers = {ERROR_CODE_HEADER: str(self.code), ERROR_HEADER: _header_safe(self.message)}
        return json.dumps(self.body()).encode(), headers


class BadRequest(NexError):
    """The request is wrong (400): a bad field, name, subject or file; it changed nothing."""

    code = 400


class Forbidden(NexError):
    """The request is refused (403): not signed as the node requires, or not allowed to its signer."""

    code = 403


class NotFound(NexError):
    """What the request names does not exist (404)."""

    code = 404


class WorkloadNotFound(NotFound):
    """No node of the namespace runs the workload ``workload_id``."""

    def __init__(self, workload_id: str) -> None:
        super().__init__(f"no workload {workload_id!r}")
        self.workload_id = workload_id


class UnknownWorkload(WorkloadNotFound):
    """A workload that no node of ``namespace`` runs and of which the logs stream keeps no line: wrong id or
    namespace, or ended so long ago that its lines are gone."""

    hint = "`nex workload ls` lists the workloads of the namespace; -n NAMESPACE reads another namespace."

    def __init__(self, workload_id: str, namespace: str) -> None:
        NotFound.__init__(self, f"no workload {workload_id!r} in namespace {namespace!r}: no node runs it, and the logs "
                                "stream keeps none of its lines")
        self.workload_id, self.namespace = workload_id, namespace


class NodeNotFound(NotFound):
    """No node ``node_id`` answers in the namespace."""

    def __init__(self, node_id: str) -> None:
        super().__init__(f"no node {node_id!r}")
        self.node_id = node_id


class BidNotFound(NotFound):
    """A DEPLOY to a bid nobody holds any more: it expired, was used, or never was."""

    def __init__(self, bid_id: str) -> None:
        super().__init__(f"bid {bid_id!r} expired or already used")
        self.bid_id = bid_id


class ArtifactNotFound(NotFound):
    """The artifact at ``uri`` is not there (an object not in the bucket, a missing file)."""

    def __init__(self, uri: str) -> None:
        super().__init__(f"artifact not found: {uri}")
        self.uri = uri


class AppNotFound(NotFound):
    """No app ``name`` in ``namespace`` (or only its tombstone)."""

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(f"no app {name!r} in namespace {namespace!r}")
        self.namespace, self.name = namespace, name


class BadArtifact(BadRequest):
    """The artifact exists but cannot run: wrong hash, wrong format, does not compile."""


class HashMismatch(BadArtifact):
    """The bytes behind ``uri`` do not have the sha256 the request gives.

    The sha256 they do have is never stated: to someone who cannot read the bytes,
    it would be an oracle (the hash of a file only the node can read).
    """

    def __init__(self, uri: str, expected: str) -> None:
        super().__init__(f"the sha256 of {uri} is not {expected}, the one the deploy request gives")
        self.uri, self.expected = uri, expected


class ArtifactTooLarge(BadArtifact):
    """The artifact at ``uri`` is larger than the node's ``limit`` (``max_artifact_bytes``)."""

    def __init__(self, uri: str, limit: int) -> None:
        super().__init__(f"artifact {uri} is larger than this node's maximum of {limit} bytes "
                         "(max_artifact_bytes in its config)")
        self.uri, self.limit = uri, limit


class ArtifactNotAllowed(Forbidden):
    """A ``file://`` artifact outside every directory the node's operator listed (``artifact_roots``)."""

    def __init__(self, uri: str, has_roots: bool) -> None:
        if has_roots:
            message = f"artifact {uri} is outside every artifact root of this node"
        else:
            message = ("this node serves no file:// artifacts: its operator lists none of its directories "
                       "(nex node up --artifact-root DIR, or artifact_roots in its config)")
        super().__init__(f"{message}; upload the file to the Object Store instead "
                         "(nex devrun and nex apply do) and deploy it as nats://BUCKET/KEY")
        self.uri = uri


class ForbiddenTrigger(BadRequest):
    """A trigger outside its workload's subjects: ``reserved`` is the pattern it overlaps, if that is why;
    ``problem`` says why otherwise (another namespace's subjects, the node's namespace_subjects)."""

    def __init__(self, subject: str, reserved: str | None = None, problem: str | None = None) -> None:
        problem = problem or f"overlaps {reserved!r}, which workloads may not subscribe to"
        super().__init__(f"trigger subject {subject!r} {problem}")
        self.subject, self.reserved = subject, reserved


class MalformedClaim(BadRequest):
    """A claim that does not decode: not three base64url parts, not JSON, missing fields."""


class SealedEnvError(BadRequest):
    """A sealed environment that cannot be opened here; the message never holds its content."""


class ClaimRejected(Forbidden):
    """A well-formed claim this node does not accept. Subclasses say why."""


class BadSignature(ClaimRejected):
    """The claim's signature does not verify against the issuer it names."""

    def __init__(self) -> None:
        super().__init__("the claim's signature does not verify against its issuer")


class UntrustedIssuer(ClaimRejected):
    """The claim is signed by ``issuer``, which the node does not trust."""

    def __init__(self, issuer: str) -> None:
        super().__init__(f"issuer {issuer} is not trusted by this node")
        self.issuer = issuer


class ClaimRequired(ClaimRejected):
    """The node trusts issuers, and the request carries no claim."""

    def __init__(self, verb: str) -> None:
        super().__init__(f"this node trusts only signed requests: {verb} needs a claim")


class ClaimExpired(ClaimRejected):
    """The claim is not valid now: expired, or issued in the future."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the claim is not valid now: {detail}")


class ClaimReplayed(ClaimRejected):
    """The claim ``jti`` was used before: a claim is good for one request."""

    def __init__(self, jti: str) -> None:
        super().__init__(f"claim {jti} was already used")
        self.jti = jti


class ClaimMismatch(ClaimRejected):
    """The claim was signed for another request: its ``field`` (subject, body digest...) differs."""

    def __init__(self, field: str) -> None:
        super().__init__(f"the claim does not match the request: {field} differs")
        self.field = field


class NotOwner(ClaimRejected):
    """Only the issuer that deployed ``workload_id``, or an admin, may stop it."""

    def __init__(self, workload_id: str) -> None:
        super().__init__(f"only the issuer that deployed workload {workload_id} or an admin may stop it")
        self.workload_id = workload_id


class NotAdmin(ClaimRejected):
    """The node takes ``verb`` (LAMEDUCK, say) only from its admin issuers."""

    def __init__(self, verb: str) -> None:
        super().__init__(f"only an admin issuer may send {verb} to this node")
        self.verb = verb


class NotBidder(ClaimRejected):
    """The bid ``bid_id`` was asked for by another issuer, and only that one may deploy through it."""

    def __init__(self, bid_id: str) -> None:
        super().__init__(f"bid {bid_id} was asked for by another issuer: only that issuer's deploy may use it")
        self.bid_id = bid_id


class Conflict(NexError):
    """The request conflicts with the current state (409): a name in use, a record changed meanwhile."""

    code = 409


class TooManyRequests(NexError):
    """The function or node is at its limit (429): try again later."""

    code = 429


class Unavailable(NexError):
    """No node answered, or a node is draining."""

    code = 503


START_NODE_HINT = ("Is a node running? `nex node up` (or `make run` in the Nex repository) starts one with its own "
                   "NATS server on nats://127.0.0.1:4222, where commands connect when given no --server.")


class NatsUnavailable(Unavailable):
    """The client found no NATS server to talk to at ``servers``; ``problem`` says what happened there."""

    hint = START_NODE_HINT

    def __init__(self, servers: str, problem: str) -> None:
        super().__init__(f"cannot connect to NATS at {servers}: {problem}")
        self.servers, self.problem = servers, problem


class NatsConnectionLost(Unavailable):
    """The connection to NATS closed, or every server went away, while the client was using it."""

    hint = START_NODE_HINT


class NatsRefused(NatsUnavailable):
    """A NATS server answered and refused the client's credentials."""

    hint = ("The server is there and refused these credentials: check --creds, --user and --password, or --nkey "
            "(a namespace's clients use the creds file `nex creds` makes).")


class AppNotRunning(Unavailable):
    """An app that did not reach the state waited for: every replica of its current version running
    and healthy (``nex.client.NexClient.wait_app``). ``problem`` says what is missing, or why the
    fleet refuses the app's record."""

    def __init__(self, namespace: str, name: str, problem: str) -> None:
        super().__init__(f"app {name!r} in namespace {namespace!r}: {problem}")
        self.namespace, self.name, self.problem = namespace, name, problem


class FunctionError(NexError):
    """A function threw, timed out or ran out of memory; the function stays deployed."""

    code = 500

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind

    def body(self) -> dict[str, Any]:
        """The JSON body of the reply, with the ``kind`` of failure (error, timeout, memory...)."""
        return {"error": {"code": self.code, "message": self.message, "kind": self.kind}}


class InternalError(NexError):
    """A failure of Nex itself (500), or a reply the client could not read."""

    code = 500


_BY_CODE: dict[int, type[NexError]] = {
    400: BadRequest,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    429: TooManyRequests,
    503: Unavailable,
}


def _header_safe(message: str) -> str:
    # Header values are one line of printable text.
    return " ".join(message.split())[:512]


def error_code(headers: Mapping[str, str] | None) -> int | None:
    """The error code of a reply, or None when the reply is a success."""
    if not headers or ERROR_CODE_HEADER not in headers:
        return None
    try:
        return int(headers[ERROR_CODE_HEADER])
    except ValueError:
        return 500


def from_reply(data: bytes, headers: Mapping[str, str] | None) -> NexError | None:
    """The error a reply carries, or None for a success."""
    code = error_code(headers)
    if code is None:
        return None
    message = (headers or {}).get(ERROR_HEADER, "")
    try:
        detail = json.loads(data)["error"]
        message = str(detail.get("message", message))
        if "kind" in detail:
            return FunctionError(message, str(detail["kind"]))
    except (ValueError, KeyError, TypeError):
        pass
    cls = _BY_CODE.get(code, InternalError)
    err = cls.__new__(cls)
    NexError.__init__(err, message or f"error {code}")
    err.code = code
    return err
