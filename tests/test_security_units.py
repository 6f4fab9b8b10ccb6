"""The pure parts of trust: subject overlap, the claim format, xkeys and sealed boxes, the claim policy."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os

import nkeys
import pytest
from nacl.public import Box, PrivateKey, PublicKey

from nex.api import claims, keys
from nex.api.claims import SignedRequest
from nex.api.errors import (
    BadSignature, ClaimExpired, ClaimMismatch, ClaimRequired, MalformedClaim, NotAdmin, NotOwner,
    SealedEnvError, UntrustedIssuer,
)
from nex.api.models import Trigger
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


DEPLOY = "$NEX.SVC.default.control.DEPLOY.N1"
BODY = b'{"name":"app","type":"native","artifact":{"uri":"nats://B/k","sha256":"' + b"a" * 64 + b'"}}'


def signed(issuer: nkeys.KeyPair, subject: str = DEPLOY, body: bytes = BODY, now: float = NOW) -> SignedRequest:
    return SignedRequest(subject, body, claims.sign_request(issuer, subject, body, now))


def test_claim_round_trip_and_layout():
    issuer = account()
    token = claims.sign_request(issuer, DEPLOY, BODY, NOW)
    header, payload, signature = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"typ": "nex-claim", "alg": "ed25519-nkey"}
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert set(body) == {"jti", "iss", "iat", "exp", "sub", "body_sha256"}
    assert body["iss"] == issuer.public_key.decode() and body["sub"] == DEPLOY and body["exp"] > body["iat"]
    assert body["body_sha256"] == hashlib.sha256(BODY).hexdigest()
    issuer.verify(f"{header}.{payload}".encode(), base64.urlsafe_b64decode(signature + "=="))
    decoded = claims.decode(token)
    assert (decoded.verb, decoded.namespace) == ("DEPLOY", "default")


def test_tampered_claim_payload_fails_the_signature():
    token = claims.sign_request(account(), DEPLOY, BODY, NOW)
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["sub"] = "$NEX.SVC.default.control.DEPLOY.N2"
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    with pytest.raises(BadSignature):
        claims.decode(f"{header}.{forged}.{signature}")


@pytest.mark.parametrize("subject", ["nex.x", "$NEX.SVC.default.control.DEPLOY.a.b.c", "$NEX.SVC.a b.control.PING",
                                     "$NEX.SVC.default.control.DEPLOY.N1\n"])
def test_a_claim_names_one_control_subject(subject):
    with pytest.raises(ValueError):
        claims.request_claim(account().public_key.decode(), subject, b"", NOW)


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!.??.**", "e30.e30.e30", "x" * 5000])
def test_malformed_claims_are_400(token):
    with pytest.raises(MalformedClaim) as caught:
        claims.decode(token)
    assert caught.value.code == 400


def test_policy_dev_mode_accepts_unsigned_and_verifies_signed():
    policy = ClaimPolicy(clock=lambda: NOW)
    assert policy.dev_mode
    assert policy.verify(SignedRequest(DEPLOY, BODY)) is None
    issuer = account()
    assert policy.verify(signed(issuer)).iss == issuer.public_key.decode()
    with pytest.raises(ClaimMismatch):
        policy.verify(SignedRequest(DEPLOY, BODY + b" ", signed(issuer).token))


def test_policy_trusted_mode():
    issuer, stranger, admin = account(), account(), account()
    policy = ClaimPolicy([issuer.public_key.decode()], [admin.public_key.decode()], clock=lambda: NOW)
    assert not policy.dev_mode
    with pytest.raises(ClaimRequired):
        policy.verify(SignedRequest(DEPLOY, BODY))
    assert policy.verify(SignedRequest(DEPLOY, BODY), required=False) is None  # an auction may go unsigned
    with pytest.raises(UntrustedIssuer):
        policy.verify(signed(stranger))
    with pytest.raises(ClaimMismatch):  # sent to another node than the one it names
        policy.verify(SignedRequest("$NEX.SVC.default.control.DEPLOY.N2", BODY, signed(issuer).token))
    with pytest.raises(ClaimMismatch):  # another namespace
        policy.verify(SignedRequest("$NEX.SVC.other.control.DEPLOY.N1", BODY, signed(issuer).token))
    with pytest.raises(ClaimMismatch):  # another body
        policy.verify(SignedRequest(DEPLOY, BODY.replace(b"app", b"ppa"), signed(issuer).token))
    with pytest.raises(ClaimExpired):
        policy.verify(signed(issuer, now=NOW - 3600))
    with pytest.raises(ClaimExpired):
        policy.verify(signed(issuer, now=NOW + 3600))
    # Inside the clock skew allowance: accepted.
    assert policy.verify(signed(issuer, now=NOW + 10)).iss == issuer.public_key.decode()


def test_policy_stop_and_admin_rules():
    owner, other, admin = account(), account(), account()
    policy = ClaimPolicy([owner.public_key.decode(), other.public_key.decode()], [admin.public_key.decode()],
                         clock=lambda: NOW)
    undeploy = "$NEX.SVC.default.control.UNDEPLOY.w1"

    def claim_of(key: nkeys.KeyPair, subject: str = undeploy):
        return policy.verify(signed(key, subject, b""))

    owner_key = owner.public_key.decode()
    with pytest.raises(NotOwner):
        policy.check_stop(claim_of(other), "w1", owner_key)
    policy.check_stop(claim_of(owner), "w1", owner_key)
    policy.check_stop(claim_of(admin), "w1", owner_key)
    lameduck = "$NEX.SVC.default.control.LAMEDUCK.N1"
    with pytest.raises(NotAdmin):
        policy.check_admin(claim_of(owner, lameduck), "LAMEDUCK")
    with pytest.raises(NotAdmin):
        policy.check_admin(None, "LAMEDUCK")
    policy.check_admin(claim_of(admin, lameduck), "LAMEDUCK")
    ClaimPolicy().check_admin(None, "LAMEDUCK")  # dev mode

