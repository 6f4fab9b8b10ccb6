"""The node's check of an app replica's deploy against what the app's user signed.

The reconciler signs its deploys with the fleet key, but the fleet key only carries
what a user signed: a replica of a signed app comes with the user's app token
(:mod:`nex.api.appsig`), the template of its workload and the digests of every
workload of the spec. The node checks that the token verifies and its issuer is
trusted, that the digests add up to the spec digest it signs, that the template is
one of them, and that the deploy is exactly that template: name, type, lifecycle,
artifact, argv, triggers, limits, network, health, and the names of the env.

The env's values cannot be checked here: the app's env is sealed to the fleet key,
and the reconciler seals it again to this node, so the node sees another box. The
template binds the digest of the fleet-sealed env only (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterable

from nex.api import appsig
from nex.api.appsig import AppOp
from nex.api.errors import ClaimMismatch, ClaimRejected, ClaimRequired, UntrustedIssuer
from nex.api.models import DeployRequest

__all__ = ["AppDeployCheck", "FLEET_KEY_SIGNS_ONLY_APPS", "SIGNED_FIELDS"]

# The deploy fields a signed template fixes (the env is checked by its names).
SIGNED_FIELDS = ("name", "type", "lifecycle", "artifact", "argv", "triggers", "limits", "network", "health",
                 "isolation")
FLEET_KEY_SIGNS_ONLY_APPS = "the fleet key signs only replicas of signed apps: this deploy carries no app token"


class AppDeployCheck:
    """With no trusted issuer (dev mode) an unsigned app replica passes; a signed one is still
    checked in full, its issuer against no list."""

    def __init__(self, trusted: Iterable[str] = (), admins: Iterable[str] = (),
                 fleet_issuer: str | None = None) -> None:
        self.trusted = frozenset(trusted) | frozenset(admins)
        # The issuer of this node's own fleet keys, when it reconciles: a deploy it signed must
        # carry an app token, so that a reconciler cannot sign what no user did.
        self.fleet_issuer = fleet_issuer

    @property
    def dev_mode(self) -> bool:
        return not self.trusted

    def check(self, namespace: str, request: DeployRequest, issuer: str | None, env_names: Iterable[str]) -> None:
        """Raises a 403 (ClaimRejected) unless the deploy is what the app's user signed.

        ``issuer``: who signed the deploy's claim (None: unsigned); ``env_names``: the names
        of the env the deploy carries, once opened."""
        app = request.app
        if app is None or app.token is None:
            if issuer is not None and issuer == self.fleet_issuer:
                raise ClaimRejected(FLEET_KEY_SIGNS_ONLY_APPS)
            if app is not None and not self.dev_mode:
                raise ClaimRequired("an app replica (the app's token)")
            return
        claim = appsig.decode(app.token)
        if not self.dev_mode and claim.iss not in self.trusted:
            raise UntrustedIssuer(claim.iss)
        if claim.op != AppOp.APPLY:
            raise ClaimMismatch("app token op")
        if (claim.namespace, claim.name) != (namespace, app.name):
            raise ClaimMismatch("app namespace or name")
        digests = app.digests or []
        signed = claim.previous_sha256 if app.rolled_back else claim.spec_sha256
        if signed is None or appsig.spec_digest_of(namespace, app.name, digests) != signed:
            raise ClaimMismatch("app spec digest")
        template = app.template
        if template is None:
            raise ClaimMismatch("app workload template")
        digest = appsig.workload_digest(template)
        if not any(d.name == request.name and d.sha256 == digest for d in digests):
            raise ClaimMismatch("app workload digest")
        deployed = request.model_dump(mode="json", include=set(SIGNED_FIELDS))
        for field in SIGNED_FIELDS:
            if appsig.canonical(deployed.get(field)) != appsig.canonical(template.get(field)):
                raise ClaimMismatch(f"app workload {field}")
        if sorted(env_names) != sorted(template.get("env_keys") or []):
            raise ClaimMismatch("app workload env names")
