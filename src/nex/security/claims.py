"""The node's side of signed requests: which issuers it trusts, and what a claim must match.

The claim format is :mod:`nex.api.claims`; this adds the node's policy: trusted
and admin issuers, the clock, who may stop a workload or put the node in lame
duck. That a claim is used only once, fleet-wide, is :mod:`nex.security.ledger`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from nex.api import claims
from nex.api.claims import Claim, SignedRequest
from nex.api.errors import ClaimMismatch, ClaimRequired, NotAdmin, NotOwner, UntrustedIssuer


def verb_of(subject: str) -> str:
    parts = subject.split(".")
    return parts[4] if len(parts) > 4 else subject


class ClaimPolicy:
    """Checks the claims of control requests.

    With no trusted and no admin issuer the node is in dev mode: unsigned requests
    are accepted, and a signed one is still verified (signature, time, subject,
    body) but its issuer is not checked against a list.
    """

    def __init__(self, trusted: Iterable[str] = (), admins: Iterable[str] = (),
                 clock: Callable[[], float] = time.time, skew: float = claims.CLOCK_SKEW_S) -> None:
        self.admins = frozenset(admins)
        self.trusted = frozenset(trusted) | self.admins
        self._clock = clock
        self._skew = skew

    @property
    def dev_mode(self) -> bool:
        return not self.trusted

    def verify(self, request: SignedRequest, required: bool = True) -> Claim | None:
        """The claim of ``request`` once it is checked in full; None for an unsigned request that
        may go on (dev mode, or ``required`` False). Raises a ClaimRejected (403) or MalformedClaim (400)."""
        if request.token is None:
            if required and not self.dev_mode:
                raise ClaimRequired(verb_of(request.subject))
            return None
        claim = claims.decode(request.token)
        if not self.dev_mode and claim.iss not in self.trusted:
            raise UntrustedIssuer(claim.iss)
        claims.check_time(claim, self._clock(), self._skew)
        if claim.sub != request.subject:
            raise ClaimMismatch("subject")
        if claim.body_sha256 != claims.sha256_bytes(request.body):
            raise ClaimMismatch("body")
        return claim

    def check_stop(self, claim: Claim | None, workload_id: str, owner: str | None) -> None:
        """Raises unless the request's claim may stop a workload that ``owner`` deployed (None: unsigned)."""
        issuer = claim.iss if claim is not None else None
        if owner is not None and issuer != owner and issuer not in self.admins:
            raise NotOwner(workload_id)

    def check_admin(self, claim: Claim | None, verb: str) -> None:
        """Raises unless the claim is an admin's; in dev mode any request may go on."""
        if not self.dev_mode and (claim is None or claim.iss not in self.admins):
            raise NotAdmin(verb)
