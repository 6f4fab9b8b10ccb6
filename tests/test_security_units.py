"""The pure parts of trust: subject overlap, the claim format, xkeys and sealed boxes, the claim policy."""

from __future__ import annotations

import base64
import itertools
import json
import os

import nkeys
import pytest
from nacl.public import Box, PrivateKey, PublicKey

from nex.api import claims, keys
from nex.api.errors import (
    BadSignature, ClaimExpired, ClaimMismatch, ClaimReplayed, ClaimRequired, MalformedClaim, NotOwner,
    SealedEnvError, UntrustedIssuer,
)
from nex.api.models import DeployRequest, Trigger
from nex.api.subjects import RESERVED_SUBJECTS, subjects_overlap
from nex.security.claims import ClaimPolicy
from nex.security.xkeys import VERSION, XKey, open_env, seal_env

# -- subject overlap -------------------------------------------------------------------

ALPHABET = ("a", "b", "*", ">")
CONCRETE = ("a", "b", "c")


def patterns(max_len: int = 3):
    for n in range(1, max_len + 1):
        for tokens in itertools.product(ALPHABET, repeat=n):
            if ">" not in tokens[:-1]:
                yield ".".join(tokens)


def matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


CONCRETE_SUBJECTS = [".".join(t) for n in range(1, 5) for t in itertools.product(CONCRETE, repeat=n)]


def brute_overlap(a: str, b: str) -> bool:
    return any(matches(a, s) and matches(b, s) for s in CONCRETE_SUBJECTS)


def test_overlap_agrees_with_brute_force_on_every_small_pattern_pair():
    every = list(patterns())
    for a, b in itertools.product(every, repeat=2):
        assert subjects_overlap(a, b) == brute_overlap(a, b), (a, b)


def test_overlap_is_symmetric_and_reflexive():
    for a, b in itertools.product(list(patterns()), repeat=2):
        assert subjects_overlap(a, b) == subjects_overlap(b, a)
        assert subjects_overlap(a, a)


@pytest.mark.parametrize("a, b, expected", [
    (">", "$NEX.SVC.x", True), ("*.x", "$NEX.>", True), ("*.*", "$SYS.>", True),
    ("$NEX", "$NEX.>", False), ("foo.>", "foo", False), ("a.*.c", "a.b.>", True),
    ("$*.x", "$NEX.>", False),  # '*' is a wildcard only as a whole token
    ("_INBOX.abc", "_INBOX.>", True), ("INBOX.x", "_INBOX.>", False),
])
def test_overlap_cases(a, b, expected):
    assert subjects_overlap(a, b) is expected


@pytest.mark.parametrize("subject", [">", "*.>", "$NEX.SVC.default.control.PING", "$SYS.REQ.x",
                                     "$JS.API.>", "$KV.bucket.k", "$O.x.y", "$SRV.PING", "_INBOX.*", "*.API.x"])
def test_reserved_trigger_subjects_are_refused_by_the_model(subject):
    with pytest.raises(ValueError) as caught:
        Trigger(subject=subject)
    assert "overlaps" in str(caught.value)


@pytest.mark.parametrize("subject", ["*", "orders.new", "fn.*", "a.>", "NEX.x", "SYS.>", "INBOX.x"])
def test_ordinary_trigger_subjects_pass(subject):
    assert Trigger(subject=subject).subject == subject
    assert all(not subjects_overlap(subject, r) for r in RESERVED_SUBJECTS)


# -- key codec ---------------------------------------------------------------------------

def test_key_codec_matches_the_nkeys_package_for_signing_keys():
    raw = os.urandom(32)
    seed = nkeys.encode_seed(raw, nkeys.PREFIX_BYTE_ACCOUNT).decode()
    assert keys.encode_seed(keys.PREFIX_ACCOUNT, raw) == seed
    pair = nkeys.from_seed(seed.encode())
    public = pair.public_key.decode()
    assert keys.encode_public(keys.PREFIX_ACCOUNT, keys.decode_public(keys.PREFIX_ACCOUNT, public)) == public
    with pytest.raises(keys.KeyDecodeError):
        keys.decode_public(keys.PREFIX_CURVE, pair.public_key.decode())
    corrupted = seed[:10] + ("A" if seed[10] != "A" else "B") + seed[11:]  # a data character: the CRC fails
    with pytest.raises(keys.KeyDecodeError):
        keys.decode_seed(keys.PREFIX_ACCOUNT, corrupted)


# -- xkeys ---------------------------------------------------------------------------------

def test_xkey_text_forms():
    key = XKey.create()
    assert key.public.startswith("X") and len(key.public) == 56
    assert key.seed().startswith("SX") and len(key.seed()) == 58
    assert XKey.from_seed(key.seed()).public == key.public


def test_seal_wire_layout_is_xkv1_nonce_then_a_plain_nacl_box():
    """Go's nkeys Seal: "xkv1" || 24-byte nonce || box.Seal(msg, nonce, recipientPub, senderPriv).

    Opened here with PyNaCl's raw Box from the raw keys, so the layout is checked
    independently of XKey.open.
    """
    sender_raw, recipient_raw = bytes(range(32)), bytes(range(32, 64))
    sender, recipient = XKey(sender_raw), XKey(recipient_raw)
    nonce = bytes(range(100, 124))
    sealed = sender.seal(b"Hello xkeys!", recipient.public, nonce=nonce)
    assert sealed[:4] == b"xkv1" == VERSION and sealed[4:28] == nonce
    assert len(sealed) == 4 + 24 + 16 + len(b"Hello xkeys!")
    box = Box(PrivateKey(recipient_raw), PublicKey(keys.decode_public(keys.PREFIX_CURVE, sender.public)))
    assert box.decrypt(sealed[28:], nonce) == b"Hello xkeys!"
    assert recipient.open(sealed, sender.public) == b"Hello xkeys!"
    # The same inputs give the same bytes: a fixed vector for other implementations.
    assert sealed == sender.seal(b"Hello xkeys!", recipient.public, nonce=nonce)


def test_sealed_env_opens_only_for_its_recipient_and_never_says_what_it_holds():
    sender, node, other = XKey.create(), XKey.create(), XKey.create()
    sealed = seal_env({"TOKEN": "hunter2"}, sender, node.public)
    assert open_env(sealed, sender.public, node) == {"TOKEN": "hunter2"}
    with pytest.raises(SealedEnvError) as caught:
        open_env(sealed, sender.public, other)
    assert "another node" in caught.value.message and "hunter2" not in caught.value.message
    raw = bytearray(base64.b64decode(sealed))
    raw[-1] ^= 1
    with pytest.raises(SealedEnvError):
        open_env(base64.b64encode(bytes(raw)).decode(), sender.public, node)
    with pytest.raises(SealedEnvError):
        open_env("not base64!", sender.public, node)
    not_a_map = base64.b64encode(sender.seal(b'["hunter2"]', node.public)).decode()
    with pytest.raises(SealedEnvError) as caught:
        open_env(not_a_map, sender.public, node)
    assert "hunter2" not in caught.value.message


# -- claims -------------------------------------------------------------------------------

NOW = 1_800_000_000


def account() -> nkeys.KeyPair:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT))


def deploy_request(claim: str | None = None, name: str = "app", sha256: str = "a" * 64, **extra) -> DeployRequest:
    return DeployRequest(name=name, type="native", artifact={"uri": "file:///x", "sha256": sha256},
                         claim=claim, **extra)


def signed_deploy(issuer: nkeys.KeyPair, now: float = NOW, **fields) -> str:
    claim = claims.deploy_claim(issuer.public_key.decode(), fields.pop("namespace", "default"),
                                fields.pop("name", "app"), fields.pop("sha256", "a" * 64), now, **fields)
    return claims.sign(claim, issuer)


def test_claim_round_trip_and_layout():
    issuer = account()
    token = signed_deploy(issuer)
    header, payload, signature = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"typ": "nex-claim", "alg": "ed25519-nkey"}
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert body["iss"] == issuer.public_key.decode() and body["op"] == "deploy" and body["exp"] > body["iat"]
    issuer.verify(f"{header}.{payload}".encode(), base64.urlsafe_b64decode(signature + "=="))
    assert claims.decode(token).name == "app"


def test_tampered_claim_payload_fails_the_signature():
    token = signed_deploy(account())
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["sha256"] = "b" * 64
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    with pytest.raises(BadSignature):
        claims.decode(f"{header}.{forged}.{signature}")


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!.??.**", "e30.e30.e30", "x" * 5000])
def test_malformed_claims_are_400(token):
    with pytest.raises(MalformedClaim) as caught:
        claims.decode(token)
    assert caught.value.code == 400


def test_policy_dev_mode_accepts_unsigned_and_verifies_signed():
    policy = ClaimPolicy(clock=lambda: NOW)
    assert policy.dev_mode
    assert policy.check_deploy("default", deploy_request()) is None
    issuer = account()
    assert policy.check_deploy("default", deploy_request(signed_deploy(issuer))) == issuer.public_key.decode()


def test_policy_trusted_mode():
    issuer, stranger, admin = account(), account(), account()
    policy = ClaimPolicy([issuer.public_key.decode()], [admin.public_key.decode()], clock=lambda: NOW)
    assert not policy.dev_mode
    with pytest.raises(ClaimRequired):
        policy.check_deploy("default", deploy_request())
    with pytest.raises(UntrustedIssuer):
        policy.check_deploy("default", deploy_request(signed_deploy(stranger)))
    with pytest.raises(ClaimMismatch):
        policy.check_deploy("default", deploy_request(signed_deploy(issuer), name="other"))
    with pytest.raises(ClaimMismatch):
        policy.check_deploy("default", deploy_request(signed_deploy(issuer), sha256="b" * 64))
    with pytest.raises(ClaimMismatch):
        policy.check_deploy("other", deploy_request(signed_deploy(issuer, namespace="default")))
    with pytest.raises(ClaimExpired):
        policy.check_deploy("default", deploy_request(signed_deploy(issuer, now=NOW - 3600)))
    with pytest.raises(ClaimExpired):
        policy.check_deploy("default", deploy_request(signed_deploy(issuer, now=NOW + 3600)))
    # Inside the clock skew allowance: accepted.
    token = signed_deploy(issuer, now=NOW + 10)
    assert policy.check_deploy("default", deploy_request(token)) == issuer.public_key.decode()
    with pytest.raises(ClaimReplayed):
        policy.check_deploy("default", deploy_request(token))


def test_policy_forgets_used_ids_once_they_expire():
    now = [NOW]
    issuer = account()
    policy = ClaimPolicy([issuer.public_key.decode()], clock=lambda: now[0])
    for _ in range(5):
        policy.check_deploy("default", deploy_request(signed_deploy(issuer, now=now[0])))
    assert policy.remembered == 5
    now[0] += claims.DEFAULT_LIFETIME_S + claims.CLOCK_SKEW_S + 1
    policy.check_deploy("default", deploy_request(signed_deploy(issuer, now=now[0])))
    assert policy.remembered == 1


def test_policy_undeploy_ownership():
    owner, other, admin = account(), account(), account()
    policy = ClaimPolicy([owner.public_key.decode(), other.public_key.decode()], [admin.public_key.decode()],
                         clock=lambda: NOW)

    def undeploy_token(key: nkeys.KeyPair, workload_id: str = "w1") -> str:
        return claims.sign(claims.undeploy_claim(key.public_key.decode(), "default", workload_id, NOW), key)

    owner_key = owner.public_key.decode()
    with pytest.raises(NotOwner):
        policy.check_undeploy("default", "w1", owner_key, undeploy_token(other))
    with pytest.raises(ClaimMismatch):
        policy.check_undeploy("default", "w1", owner_key, undeploy_token(owner, "w2"))
    with pytest.raises(ClaimMismatch):  # a deploy claim is no undeploy claim
        policy.check_undeploy("default", "w1", owner_key, signed_deploy(owner))
    policy.check_undeploy("default", "w1", owner_key, undeploy_token(owner))
    policy.check_undeploy("default", "w1", owner_key, undeploy_token(admin))


def test_policy_binds_the_sealed_env():
    issuer = account()
    policy = ClaimPolicy([issuer.public_key.decode()], clock=lambda: NOW)
    sender = XKey.create()
    sealed = seal_env({"A": "1"}, sender, XKey.create().public)
    other = seal_env({"A": "2"}, sender, XKey.create().public)
    token = signed_deploy(issuer, sealed_env=sealed)
    with pytest.raises(ClaimMismatch):
        policy.check_deploy("default", deploy_request(token, sealed_env=other, sender_xkey=sender.public))
    assert policy.check_deploy(
        "default", deploy_request(token, sealed_env=sealed, sender_xkey=sender.public)) == issuer.public_key.decode()
