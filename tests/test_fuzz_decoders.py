"""Property-based fuzzing of the claim, app token and sealed-environment decoders (pure functions).

Whatever the input, they return a value or raise their documented error types:
``MalformedClaim`` or ``BadSignature`` for request claims and app tokens,
``SealedEnvError`` for sealed environments. Anything else would be a 500 at the
node, or a reconciler that stops on a record.
"""

from __future__ import annotations

import base64
import json
import os

import nkeys
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nex.api import appsig, claims
from nex.api.errors import BadSignature, MalformedClaim, SealedEnvError
from nex.security.xkeys import VERSION, XKey, open_env, seal_env

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
ISSUER = nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT))
ISSUER_PUBLIC = ISSUER.public_key.decode()
NODE, SENDER = XKey.create(), XKey.create()
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def valid_token() -> str:
    return claims.sign_request(ISSUER, "$NEX.SVC.default.control.DEPLOY.N1", b'{"name":"fuzz"}', now=1_700_000_000)


def decodes_or_refuses(token: str) -> claims.Claim | None:
    try:
        return claims.decode(token)
    except (MalformedClaim, BadSignature):
        return None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
nested = st.one_of(st.integers(1, 50), st.integers(900, 1500)).map(lambda depth: "[" * depth + "]" * depth)


@FUZZ
@given(token=st.one_of(
    st.text(max_size=300),
    st.lists(st.text(B64URL, max_size=80), min_size=1, max_size=5).map(".".join),
    st.tuples(json_values, json_values, st.binary(max_size=80)).map(
        lambda t: ".".join([b64url(json.dumps(t[0]).encode()), b64url(json.dumps(t[1]).encode()), b64url(t[2])])),
    nested.map(lambda text: f"{b64url(text.encode())}.{b64url(b'{}')}.{b64url(b'x')}"),
    nested.map(lambda text: f"{b64url(json.dumps(claims.HEADER).encode())}.{b64url(text.encode())}.AA"),
))
def test_claim_decoder_raises_only_its_errors(token: str):
    assert decodes_or_refuses(token) is None


@pytest.mark.parametrize("make, decode", [(lambda: valid_token(), claims.decode),
                                          (lambda: valid_app_token(), appsig.decode)], ids=["claim", "app token"])
def test_an_altered_token_never_verifies_as_another(make, decode):
    token = make()
    original = decode(token)

    @FUZZ
    @given(position=st.integers(0, 10_000), replacement=st.sampled_from(list(B64URL) + [".", "", "=", "é"]))
    def altered(position: int, replacement: str) -> None:
        index = position % len(token)
        try:
            decoded = decode(token[:index] + replacement + token[index + 1:])
        except (MalformedClaim, BadSignature):
            return
        # Non-canonical base64 can give the same bytes: the same payload, never a different one.
        assert decoded == original

    altered()


def valid_app_token() -> str:
    return appsig.sign(appsig.AppClaim(iss=ISSUER_PUBLIC, iat=1_700_000_000, op="apply", namespace="default",
                                       name="fuzz", version=2, spec_sha256="0" * 64, previous_sha256="1" * 64),
                       ISSUER)


def app_token_or_refusal(token: str) -> appsig.AppClaim | None:
    try:
        return appsig.decode(token)
    except (MalformedClaim, BadSignature):
        return None


app_payloads = st.fixed_dictionaries({
    "iss": st.sampled_from([ISSUER_PUBLIC, "A" * 56, "x"]), "iat": st.integers(-5, 2**64),
    "op": st.sampled_from(["apply", "delete", "deploy"]), "namespace": st.text(max_size=10),
    "name": st.text(max_size=10), "version": st.integers(-5, 2**64),
}, optional={"spec_sha256": st.text("0123456789abcdef", max_size=70), "previous_sha256": json_values})


@FUZZ
@given(token=st.one_of(
    st.text(max_size=300),
    st.lists(st.text(B64URL, max_size=80), min_size=1, max_size=5).map(".".join),
    st.tuples(app_payloads, st.binary(max_size=80)).map(
        lambda t: ".".join([b64url(json.dumps(appsig.HEADER).encode()), b64url(json.dumps(t[0]).encode()),
                            b64url(t[1])])),
    nested.map(lambda text: f"{b64url(json.dumps(appsig.HEADER).encode())}.{b64url(text.encode())}.AA"),
    st.just(valid_token()),  # a request claim is no app token
))
def test_the_app_token_decoder_raises_only_its_errors(token: str):
    assert app_token_or_refusal(token) is None



@FUZZ
@given(sealed=st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode()),
    st.binary(max_size=200).map(lambda b: base64.b64encode(VERSION + b).decode()),
), sender=st.one_of(st.just(SENDER.public), st.text(max_size=60)))
def test_sealed_env_decoder_raises_only_its_error(sealed: str, sender: str):
    try:
        open_env(sealed, sender, NODE)
    except SealedEnvError:
        return
    raise AssertionError("junk opened as a sealed environment")


@FUZZ
@given(plain=st.one_of(json_values.map(json.dumps), nested, st.text(max_size=100)))
def test_a_properly_sealed_box_of_anything_opens_or_is_refused(plain: str):
    sealed = base64.b64encode(SENDER.seal(plain.encode(), NODE.public)).decode()
    try:
        env = open_env(sealed, SENDER.public, NODE)
    except SealedEnvError as exc:
        assert plain not in exc.message or len(plain) < 3
        return
    assert isinstance(env, dict) and all(isinstance(v, str) for v in env.values())


def test_a_sealed_env_round_trips():
    sealed = seal_env({"TOKEN": "s3cret"}, SENDER, NODE.public)
    assert open_env(sealed, SENDER.public, NODE) == {"TOKEN": "s3cret"}
