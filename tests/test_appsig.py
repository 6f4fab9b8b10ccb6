"""Signed desired state, the pure parts: the app token (nex.api.appsig), which records the
reconciler acts on (nex.api.appverify) and the node's check of an app replica's deploy
(nex.security.apps). The token decoder is fuzzed in tests/test_fuzz_decoders.py, beside the
request claims' decoder."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import nkeys
import pytest

from nex.api import appsig, claims
from nex.api.appsig import AppClaim, AppOp
from nex.api.apps import AppRecord, AppSpec
from nex.api.errors import ClaimMismatch, ClaimRejected, ClaimRequired, MalformedClaim, UntrustedIssuer
from nex.api.models import AppRef, DeployRequest
from nex.client.appstore import sign_record
from nex.api.appverify import Trust, decide
from nex.security.apps import FLEET_KEY_SIGNS_ONLY_APPS, AppDeployCheck
from nex.security.keystore import UserKeys
from nex.security.xkeys import XKey



def account() -> nkeys.KeyPair:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT))


def keys() -> UserKeys:
    return UserKeys(account(), XKey.create())


USER, STRANGER, ADMIN = keys(), keys(), keys()
SHA = "ab" * 32


def spec(argv: list[str] | None = None, name: str = "shop") -> AppSpec:
    return AppSpec.model_validate({"name": name, "workloads": [
        {"name": "ticker", "type": "native", "argv": argv or [], "replicas": 2,
         "artifact": {"uri": "nats://NEXCLIFILES/ticker", "sha256": SHA}, "health": {"tcp": 8080},
         "sealed_env": "c2VhbGVk", "sender_xkey": USER.xkey.public, "env_keys": ["A", "B"]},
        {"name": "hello", "type": "javascript", "triggers": [{"subject": "demo.hello"}],
         "artifact": {"uri": "nats://NEXCLIFILES/hello.js", "sha256": SHA}},
    ]})


def record(version: int = 1, signer: UserKeys | None = USER, **fields) -> AppRecord:
    fields.setdefault("spec", spec())
    return sign_record(AppRecord(version=version, applied_at=datetime.now(timezone.utc), **fields), signer)


# -- the token and the digests --------------------------------------------------------------


def test_a_token_round_trips_and_binds_the_spec():
    signed = record(version=3, previous=spec(["v1"]))
    claim = appsig.decode(signed.token)
    assert (claim.iss, claim.op, claim.namespace, claim.name, claim.version) == (
        USER.issuer_public, AppOp.APPLY, "default", "shop", 3)
    assert claim.spec_sha256 == appsig.spec_digest(spec()) != appsig.spec_digest(spec(["x"]))
    assert claim.previous_sha256 == appsig.spec_digest(spec(["v1"]))
    # A deploy claim is not an app token, nor the other way round.
    with pytest.raises(MalformedClaim):
        claims.decode(signed.token)


def test_the_digest_is_reproducible_from_the_stored_json_and_from_one_workload():
    original = spec()
    reparsed = AppSpec.model_validate_json(original.model_dump_json(exclude_none=True))
    assert appsig.spec_digest(reparsed) == appsig.spec_digest(original)
    # A node given one workload's template and the list of digests computes the same spec digest.
    digests = appsig.workload_digests(original)
    form = json.loads(json.dumps(appsig.template(original.workloads[0])))
    assert appsig.workload_digest(form) == digests[0].sha256
    assert "sealed_env" not in form and form["sealed_env_sha256"]
    assert appsig.spec_digest_of("default", "shop", digests) == appsig.spec_digest(original)
    assert appsig.spec_digest_of("other", "shop", digests) != appsig.spec_digest(original)


def test_a_token_says_what_it_lacks():
    with pytest.raises(ValueError):
        AppClaim(iss=USER.issuer_public, iat=0, op=AppOp.APPLY, namespace="default", name="shop", version=1)
    with pytest.raises(ValueError):
        appsig.sign(AppClaim(iss=STRANGER.issuer_public, iat=0, op=AppOp.DELETE, namespace="default", name="x",
                             version=1), USER.issuer)


# -- which records the reconciler acts on ------------------------------------------------------


TRUSTED = Trust.of([USER.issuer_public], [ADMIN.issuer_public])


@pytest.mark.parametrize("trust", [TRUSTED, Trust()])
def test_a_signed_record_is_acted_on_and_becomes_the_high_water_mark(trust):
    first = record()
    decision = decide(first, None, trust)
    assert decision.act_on == first and decision.accept == first and decision.refused is None
    assert decide(first, first, trust).accept is None  # nothing new to store


@pytest.mark.parametrize("bad, reason", [
    (lambda: record(signer=None), "not signed"),
    (lambda: record(signer=STRANGER), "does not trust"),
    (lambda: record().model_copy(update={"spec": spec(["evil"])}), "does not match its signature"),
    (lambda: record(previous=spec(["v0"])).model_copy(update={"previous": spec(["evil"])}),
     "previous spec does not match"),
    (lambda: record().model_copy(update={"version": 9}), "signs version 1, not 9"),
    (lambda: record().model_copy(update={"deleted": True}), "op does not match"),
    (lambda: record().model_copy(update={"rolled_back": True}), "marked rolled back"),
    (lambda: record().model_copy(update={"token": record().token[:-4] + "AAAA"}), "does not verify"),
    (lambda: record(spec=spec(name="cart")).model_copy(update={"spec": spec()}), "signs app default/cart"),
])
def test_a_bad_record_is_refused_and_the_verified_one_keeps_running(bad, reason):
    verified = record()
    decision = decide(bad(), verified, TRUSTED)
    assert decision.act_on == verified and decision.accept is None
    assert reason in decision.refused


def test_versions_only_go_forward_and_belong_to_their_issuer():
    second = record(version=2, previous=spec(["v0"]))
    assert "older than the verified version 2" in decide(record(version=1), second, TRUSTED).refused
    assert "another signature" in decide(record(version=2, spec=spec(["other"])), second, TRUSTED).refused
    other = Trust.of([USER.issuer_public, STRANGER.issuer_public], [ADMIN.issuer_public])
    assert "app is " + USER.issuer_public in decide(record(version=3, signer=STRANGER), second, other).refused
    assert decide(record(version=3, signer=ADMIN), second, other).refused is None
    # Dev mode: unsigned apps as before, but a signed one stays its issuer's.
    assert decide(record(signer=None), None, Trust()).act_on is not None
    assert "only that issuer" in decide(record(version=3, signer=None), second, Trust()).refused


def test_rollback_tombstone_and_vanishing():
    current = record(version=2, previous=spec(["v1"]))
    rolled = current.model_copy(update={"spec": spec(["v1"]), "previous": None, "rolled_back": True})
    assert decide(rolled, current, TRUSTED).act_on == rolled  # no new signature needed
    assert "older" in decide(current, rolled, TRUSTED).refused  # and the failed spec cannot come back

    gone = decide(None, current, TRUSTED)
    assert gone.act_on == current and "without a signed tombstone" in gone.refused
    tombstone = record(version=3, deleted=True)
    assert decide(tombstone, current, TRUSTED) == decide(tombstone, current, TRUSTED)
    stopped = decide(tombstone, current, TRUSTED)
    assert stopped.act_on is None and stopped.accept == tombstone and stopped.refused is None
    assert decide(None, tombstone, TRUSTED) == decide(None, None, TRUSTED)  # deleted: nothing to run
    # An unsigned dev-mode app whose record is deleted is deleted, as before.
    unsigned = record(signer=None)
    assert decide(None, unsigned, Trust()).forget and decide(None, unsigned, Trust()).act_on is None


# -- the node's check of a replica's deploy --------------------------------------------------------


def replica(signed: AppRecord, workload: int = 0, rolled_back: bool = False, **changes) -> DeployRequest:
    source = signed.spec.workloads[workload]
    fields = source.model_dump(include={"name", "type", "lifecycle", "artifact", "argv", "triggers", "limits",
                                        "network", "health"})
    app = AppRef(name=signed.spec.name, revision=source.revision(), token=signed.token,
                 template=appsig.template(source), digests=appsig.workload_digests(signed.spec),
                 rolled_back=rolled_back)
    return DeployRequest.model_validate({**fields, "app": app.model_dump(), **changes})


ENV = ["A", "B"]


def test_a_replica_of_a_signed_app_passes_and_every_signed_field_is_checked():
    check = AppDeployCheck([USER.issuer_public])
    signed = record()
    check.check("default", replica(signed), "AFLEET", ENV)
    check.check("default", replica(signed, workload=1), "AFLEET", [])
    for change, field in [({"argv": ["evil"]}, "argv"), ({"artifact": {"uri": "nats://X/evil", "sha256": SHA}},
                          "artifact"), ({"network": "host"}, "network"), ({"health": None}, "health"),
                          ({"limits": {"memory_mib": 1}}, "limits"), ({"lifecycle": "job"}, "lifecycle")]:
        with pytest.raises(ClaimMismatch) as caught:
            check.check("default", replica(signed, **change), "AFLEET", ENV)
        assert field in caught.value.message
    with pytest.raises(ClaimMismatch) as caught:
        check.check("default", replica(signed), "AFLEET", ["A", "B", "LD_PRELOAD"])
    assert "env names" in caught.value.message


def test_a_replica_is_refused_when_its_signature_does_not_hold():
    check = AppDeployCheck([USER.issuer_public])
    signed = record()
    with pytest.raises(UntrustedIssuer):
        check.check("default", replica(record(signer=STRANGER)), "AFLEET", ENV)
    with pytest.raises(ClaimMismatch):
        check.check("other", replica(signed), "AFLEET", ENV)
    forged_template = replica(signed, argv=["evil"])
    forged_template.app.template["argv"] = ["evil"]
    with pytest.raises(ClaimMismatch) as caught:
        check.check("default", forged_template, "AFLEET", ENV)
    assert "workload digest" in caught.value.message
    with pytest.raises(ClaimMismatch):  # the spec's own digest is not the previous one
        check.check("default", replica(signed, rolled_back=True), "AFLEET", ENV)
    with pytest.raises(ClaimRequired):
        check.check("default", replica(signed).model_copy(update={"app": AppRef(name="shop", revision="0" * 12)}),
                    "AFLEET", ENV)


def test_a_rolled_back_replica_is_checked_against_the_previous_digest():
    check = AppDeployCheck([USER.issuer_public])
    current = record(version=2, previous=spec(["v1"]))
    rolled = current.model_copy(update={"spec": spec(["v1"]), "previous": None, "rolled_back": True})
    check.check("default", replica(rolled, rolled_back=True), "AFLEET", ENV)


def test_the_nodes_fleet_key_signs_only_replicas_of_signed_apps():
    check = AppDeployCheck(fleet_issuer="AFLEET")
    plain = replica(record()).model_copy(update={"app": None})
    with pytest.raises(ClaimRejected) as caught:
        check.check("default", plain, "AFLEET", ENV)
    assert caught.value.message == FLEET_KEY_SIGNS_ONLY_APPS
    check.check("default", plain, None, ENV)  # dev mode, unsigned: as before
    check.check("default", replica(record()), "AFLEET", ENV)
