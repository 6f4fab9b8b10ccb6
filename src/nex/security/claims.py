"""The node's side of signed requests: which issuers it trusts, and what a claim must match.

The claim format is :mod:`nex.api.claims`; this adds the node's policy: trusted
and admin issuers, the clock, and the memory of used claim ids (kept until the
claim would have expired anyway, so replay protection costs bounded memory).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from nex.api import claims
from nex.api.claims import Claim, ClaimOp
from nex.api.errors import (
    ClaimMismatch, ClaimReplayed, ClaimRequired, NotOwner, UntrustedIssuer,
)
from nex.api.models import DeployRequest


class ClaimPolicy:
    """Checks the claims of DEPLOY and UNDEPLOY requests.

    With no trusted and no admin issuer the node is in dev mode: unsigned requests
    are accepted, and a signed one is still verified (signature, time, replay,
    binding) but its issuer is not checked against a list.
    """

    def __init__(self, trusted: Iterable[str] = (), admins: Iterable[str] = (),
                 clock: Callable[[], float] = time.time, skew: float = claims.CLOCK_SKEW_S) -> None:
        self.admins = frozenset(admins)
        self.trusted = frozenset(trusted) | self.admins
        self._clock = clock
        self._skew = skew
        self._seen: dict[str, float] = {}  # jti -> when it may be forgotten

    @property
    def dev_mode(self) -> bool:
        return not self.trusted

    @property
    def remembered(self) -> int:
        """How many used claim ids the node keeps (until each claim expires)."""
        return len(self._seen)

    def check_deploy(self, namespace: str, request: DeployRequest) -> str | None:
        """The issuer of the request's claim (None for an unsigned one in dev mode)."""
        if request.claim is None:
            if not self.dev_mode:
                raise ClaimRequired("DEPLOY")
            return None
        claim = self._verify(request.claim, ClaimOp.DEPLOY, namespace)
        if claim.name != request.name:
            raise ClaimMismatch("name")
        if claim.sha256 != request.artifact.sha256:
            raise ClaimMismatch("artifact sha256")
        sealed_digest = claims.sha256_text(request.sealed_env) if request.sealed_env else None
        if claim.sealed_env_sha256 != sealed_digest:
            raise ClaimMismatch("sealed_env")
        self._remember(claim)
        return claim.iss

    def check_undeploy(self, namespace: str, workload_id: str, owner: str | None, token: str | None) -> None:
        """Raises unless the request may stop a workload that ``owner`` deployed (None: unsigned)."""
        if token is None:
            if not self.dev_mode:
                raise ClaimRequired("UNDEPLOY")
            if owner is not None:
                raise NotOwner(workload_id)
            return
        claim = self._verify(token, ClaimOp.UNDEPLOY, namespace)
        if claim.workload_id != workload_id:
            raise ClaimMismatch("workload_id")
        if owner is not None and claim.iss != owner and claim.iss not in self.admins:
            raise NotOwner(workload_id)
        self._remember(claim)

    def _verify(self, token: str, op: ClaimOp, namespace: str) -> Claim:
        claim = claims.decode(token)
        if not self.dev_mode and claim.iss not in self.trusted:
            raise UntrustedIssuer(claim.iss)
        now = self._clock()
        claims.check_time(claim, now, self._skew)
        if claim.op != op:
            raise ClaimMismatch("op")
        if claim.namespace != namespace:
            raise ClaimMismatch("namespace")
        self._forget_expired(now)
        if claim.jti in self._seen:
            raise ClaimReplayed(claim.jti)
        return claim

    def _remember(self, claim: Claim) -> None:
        # Only once every check passed: a refused request does not burn its id.
        self._seen[claim.jti] = claim.exp + self._skew

    def _forget_expired(self, now: float) -> None:
        expired = [jti for jti, until in self._seen.items() if until < now]
        for jti in expired:
            del self._seen[jti]
