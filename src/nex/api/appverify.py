"""Which app records the reconciler acts on. Pure: the records, the last verified ones and the
trust lists in, a decision per app out.

Anyone who can write NEX_APPS can write a record, so a record is only a request: the
reconciler acts on it once its app token (:mod:`nex.api.appsig`) verifies against the
node's trust lists, binds the record (namespace, name, version, spec, previous spec,
tombstone or not), and is not older than the last record it verified for that app
(kept under ``verified.<ns>.<name>``). A record that fails any of these is refused:
the last verified record keeps being reconciled, and the refusal is reported. A
record that vanishes without a signed tombstone stops nothing either.

Dev mode (no trusted issuer) keeps unsigned apps working as before, but an app that
was signed can only be changed or deleted by its issuer from then on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from nex.api import appsig
from nex.api.appsig import AppClaim, AppOp
from nex.api.apps import AppRecord
from nex.api.errors import NexError

__all__ = ["Decision", "RecordRefused", "Trust", "check_record", "decide", "signer_of"]


@dataclass(frozen=True)
class Trust:
    """The reconciling node's trust lists (its ClaimPolicy's)."""

    trusted: frozenset[str] = frozenset()
    admins: frozenset[str] = frozenset()

    @classmethod
    def of(cls, trusted: Iterable[str] = (), admins: Iterable[str] = ()) -> Trust:
        """Trust in these issuers (and admins, who may change any app); none given: dev mode."""
        return cls(frozenset(trusted) | frozenset(admins), frozenset(admins))

    @property
    def dev_mode(self) -> bool:
        """Whether no issuer is trusted: unsigned apps are acted on (signed ones stay their issuer's)."""
        return not self.trusted


class RecordRefused(Exception):
    """Why a record is not acted on: a sentence for the event, the log and the status (no secret)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Decision:
    """What the reconciler does with one app's record: act on a record, accept a new one, refuse, forget."""

    act_on: AppRecord | None = None  # what the planner reconciles: None, nothing (deleted or never verified)
    accept: AppRecord | None = None  # a newly verified record: the new high-water mark to store
    refused: str | None = None
    refused_version: int | None = None
    forget: bool = False  # the verified key of an unsigned dev-mode app whose record is gone


def signer_of(record: AppRecord) -> str | None:
    """The issuer whose signature verifies on the record's token (trusted or not); None otherwise."""
    if record.token is None:
        return None
    try:
        return appsig.decode(record.token).iss
    except NexError:
        return None


def _verify_own(record: AppRecord, trust: Trust) -> AppClaim:
    """The record's claim, once it verifies and binds this very record; RecordRefused otherwise."""
    assert record.token is not None
    try:
        claim = appsig.decode(record.token)
    except NexError as exc:
        raise RecordRefused(f"its signature does not verify ({exc.message})") from None
    if not trust.dev_mode and claim.iss not in trust.trusted:
        raise RecordRefused(f"it is signed by {claim.iss}, an issuer this fleet does not trust")
    spec = record.spec
    if (claim.namespace, claim.name) != (spec.namespace, spec.name):
        raise RecordRefused(f"its token signs app {claim.namespace}/{claim.name}, not this one")
    if claim.version != record.version:
        raise RecordRefused(f"its token signs version {claim.version}, not {record.version}")
    if (claim.op == AppOp.DELETE) != record.deleted:
        raise RecordRefused("its token's op does not match the record (tombstone or not)")
    if claim.op == AppOp.DELETE:
        return claim
    if record.rolled_back:
        if record.previous is not None or claim.previous_sha256 != appsig.spec_digest(spec):
            raise RecordRefused("it is marked rolled back, but its spec is not the previous spec its token signs")
        return claim
    if claim.spec_sha256 != appsig.spec_digest(spec):
        raise RecordRefused("its spec does not match its signature (tampered with)")
    if record.previous is not None and claim.previous_sha256 != appsig.spec_digest(record.previous):
        raise RecordRefused("its previous spec does not match its signature (tampered with)")
    return claim


def _order(record: AppRecord) -> tuple[int, bool]:
    # A rollback keeps its token's version: it comes after the record it rolled back.
    return record.version, record.rolled_back


def check_record(record: AppRecord, last: AppRecord | None, last_claim: AppClaim | None,
                 trust: Trust) -> AppClaim | None:
    """The claim of a record the reconciler may act on (None: an unsigned one, in dev mode).

    ``last``: the last verified record of the app, ``last_claim`` its claim (None: unsigned).
    Raises RecordRefused with the reason otherwise.
    """
    if record.token is None:
        if not trust.dev_mode:
            raise RecordRefused("it is not signed, and this fleet runs only apps signed by a trusted issuer "
                                "(nex apply with your keys)")
        if last_claim is not None and last is not None and not last.deleted:
            raise RecordRefused(f"it is not signed, but the app is signed by {last_claim.iss}: only that "
                                "issuer may change or delete it")
        return None
    claim = _verify_own(record, trust)
    if last is None:
        return claim
    if _order(record) < _order(last):
        raise RecordRefused(f"its version {record.version} is older than the verified version {last.version} "
                            "(a replay)")
    if _order(record) == _order(last) and record.token != last.token:
        raise RecordRefused(f"version {record.version} was verified with another signature")
    if (last_claim is not None and not last.deleted and claim.iss != last_claim.iss
            and claim.iss not in trust.admins):
        raise RecordRefused(f"it is signed by {claim.iss}, but the app is {last_claim.iss}'s: only that "
                            "issuer or an admin may change or delete it")
    return claim


def decide(record: AppRecord | None, last: AppRecord | None, trust: Trust) -> Decision:
    """What to do about one app: its stored record (None: vanished) and its last verified record."""
    last_claim: AppClaim | None = None
    if last is not None:
        if last.token is None and not trust.dev_mode:
            last = None  # verified in dev mode: not by this fleet's rules
        elif last.token is not None:
            try:
                last_claim = _verify_own(last, trust)
            except RecordRefused:
                last = None  # the trust lists changed, or the key was written by someone else
    running = last if last is not None and not last.deleted else None
    if record is None:
        if running is None:
            return Decision()
        if last_claim is None:
            return Decision(forget=True)  # an unsigned dev-mode app, deleted as before
        return Decision(act_on=running, refused="its record was deleted without a signed tombstone "
                        f"(nex app delete): version {running.version} keeps running",
                        refused_version=running.version)
    try:
        check_record(record, last, last_claim, trust)
    except RecordRefused as refused:
        return Decision(act_on=running, refused=refused.reason, refused_version=record.version)
    accept = None if last is not None and last.model_dump() == record.model_dump() else record
    return Decision(act_on=None if record.deleted else record, accept=accept)
