"""Property-based fuzzing of every control subject the node answers, against a real node.

Every message gets a well-formed reply (a success that validates, or a refusal
with matching header and body), never a time-out and never a 500; the node keeps
serving a canary workload. Hypothesis runs in a worker thread and sends each
example on the test's event loop, so its shrinking works on real replies. The run
is bounded and derandomized, so CI sees the same examples each time.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.errors import NoRespondersError

from nex.api import claims, subjects
from nex.api.replies import check_reply
from nex.node.node import Node

from helpers import control, file_artifact

REFUSALS = {400, 403, 404, 409, 429}
FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- strategies ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=25,
)
huge_strings = st.builds(lambda c, n: c * n, st.sampled_from(["x", "\u00e9", "\U0001f600", "\x00", "."]),
                         st.integers(2000, 20_000))
junk = json_values | huge_strings | st.integers(min_value=-(2**70), max_value=2**70)
subject_token = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"),
                                      blacklist_characters=".*> \t\r\n\x85\xa0"), min_size=1, max_size=70)
valid_token = st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")
sha256 = st.text("0123456789abcdef", min_size=64, max_size=64)
# Artifacts that can never run: nothing on disk has these hashes, or the path is not a file.
uris = st.one_of(
    st.builds(lambda s: f"file:///nonexistent/{s}", st.text(max_size=30)),
    st.sampled_from(["file:///", "file:///dev/zero", "file:///proc/self/mem", "file://relative/x",
                     "file:///etc/passwd", "file:///tmp", "file:///a%00b", "nats://", "nats://B",
                     "nats://a.b/c", "nats://*/>", "nats://B/" + "k" * 300, "nats://B/%00",
                     "http://example.com/x", "oci://", ""]),
    st.builds(lambda b, k: f"nats://{b}/{k}", st.text(max_size=20), st.text(max_size=20)),
    st.text(max_size=50),
)
subjects_in_triggers = st.one_of(
    st.sampled_from([">", "*", "a.>", "a.>.b", "$SYS.>", "$NEX.SVC.>", "_INBOX.x", "a..b", ".", "a b", ""]),
    st.lists(subject_token, min_size=1, max_size=5).map(".".join),
    junk,
)

b64_part = st.binary(max_size=120).map(lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode())
claim_tokens = st.one_of(
    st.tuples(b64_part, b64_part, b64_part).map(".".join),
    st.tuples(json_values, json_values).map(lambda t: ".".join(
        base64.urlsafe_b64encode(json.dumps(v).encode()).rstrip(b"=").decode() for v in t) + ".AA"),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=100),  # what a header holds
)


def maybe(valid: st.SearchStrategy, invalid: st.SearchStrategy = junk) -> st.SearchStrategy:
    """Mostly a valid value, sometimes junk of any type."""
    return st.one_of(valid, valid, invalid)


@st.composite
def deploy_requests(draw: Callable[..., Any]) -> dict[str, Any]:
    body = {
        "name": draw(maybe(valid_token, subject_token)),
        "type": draw(maybe(st.sampled_from(["native", "javascript", "wasm", "oci"]))),
        "lifecycle": draw(maybe(st.sampled_from(["service", "function", "job"]))),
        "artifact": draw(maybe(st.fixed_dictionaries({"uri": uris, "sha256": maybe(sha256)}))),
        "namespace": draw(maybe(st.just("default"), subject_token)),
        "argv": draw(maybe(st.lists(st.text(max_size=20), max_size=5))),
        "env": draw(maybe(st.dictionaries(st.text(max_size=20), st.text(max_size=50), max_size=5))),
        "triggers": draw(maybe(st.lists(st.fixed_dictionaries(
            {"subject": subjects_in_triggers}, optional={"queue": maybe(valid_token)}), max_size=3))),
        "limits": draw(maybe(st.dictionaries(
            st.sampled_from(["memory_mib", "cpus", "pids", "timeout_ms", "disk"]),
            st.one_of(st.integers(-(2**64), 2**64), st.floats(), junk), max_size=4))),
        "network": draw(maybe(st.sampled_from(["none", "host", "bridge"]))),
        "description": draw(maybe(st.text(max_size=2000))),
    }
    if draw(st.booleans()):  # the security fields, with anything in them
        body["sealed_env"] = draw(maybe(st.binary(max_size=300).map(lambda b: base64.b64encode(b"xkv1" + b).decode())))
        body["sender_xkey"] = draw(maybe(st.from_regex(r"\AX[A-Z2-7]{55}\Z")))
    for key in draw(st.sets(st.sampled_from(sorted(body)))):
        del body[key]
    body.update(draw(st.dictionaries(st.text(max_size=12), junk, max_size=2)))
    artifact = body.get("artifact")
    if body.get("type") == "oci" and isinstance(artifact, dict) and str(artifact.get("uri", "")).startswith("oci:"):
        artifact["uri"] = "file:///nonexistent/image.tar"  # no registry pulls from fuzz input
    return body


bodies = st.one_of(
    st.binary(max_size=512),
    json_values.map(lambda v: json.dumps(v).encode()),
    deploy_requests().map(lambda v: json.dumps(v).encode()),
)

# -- the node under fuzz ------------------------------------------------------------------


@dataclass
class Target:
    loop: asyncio.AbstractEventLoop
    nc: Any
    node_id: str
    canary_id: str
    tried: int = 0
    codes: Counter = field(default_factory=Counter)

    def send(self, verb: str, target: str | None, payload: bytes, namespace: str = "default",
             claim: str | None = None) -> int | None:
        """Send one request from Hypothesis' thread; the reply's code, or None for success / no responder.
        ``claim``: a ``Nex-Claim`` header of any content."""
        future = asyncio.run_coroutine_threadsafe(self._send(verb, target, payload, namespace, claim), self.loop)
        self.tried += 1
        return future.result(timeout=15)

    async def _send(self, verb: str, target: str | None, payload: bytes, namespace: str,
                    claim: str | None) -> int | None:
        subject = subjects.control(namespace, verb, target)
        payload = payload[: self.nc.max_payload - 4096]  # the client refuses larger ones before sending
        headers = {claims.CLAIM_HEADER: claim} if claim is not None else None
        try:
            msg = await self.nc.request(subject, payload, timeout=5, headers=headers)
        except NoRespondersError:
            assert not self._has_responder(verb, target, namespace), subject
            return None
        code = check_reply(verb, msg.data, msg.headers)
        self.codes[code] += 1
        assert code is None or code in REFUSALS, (subject, payload[:200], msg.data[:300])
        return code


    def _has_responder(self, verb: str, target: str | None, namespace: str) -> bool:
        if target is None:
            return verb in (subjects.PING, subjects.WPING, subjects.AUCTION)
        if target == self.node_id:
            return verb in (subjects.PING, subjects.INFO, subjects.DEPLOY, subjects.LAMEDUCK)
        return target == self.canary_id and namespace == "default" and verb in (subjects.UNDEPLOY, subjects.WPING)


@pytest.fixture
async def target(node: Node, nc, programs) -> Target:
    code, canary = await control(nc, "DEPLOY", node.node_id, {
        "name": "canary", "type": "native", "artifact": file_artifact(programs["ticker"])})
    assert code is None
    yield Target(asyncio.get_running_loop(), nc, node.node_id, canary["id"])
    code, ping = await control(nc, "WPING", canary["id"])
    assert code is None and ping["workloads"][0]["state"] == "running", "fuzzing disturbed the canary"
    code, ping = await control(nc, "PING", node.node_id)
    assert code is None and ping["state"] in ("running", "lameduck")


async def run_fuzz(test: Callable[[], None]) -> None:
    await asyncio.to_thread(test)


def undeploy_would_succeed(payload: bytes) -> bool:
    from nex.api.errors import BadRequest
    from nex.api.models import UndeployRequest, parse_request
    try:
        parse_request(UndeployRequest, payload)
    except BadRequest:
        return False
    return True


# -- the properties -----------------------------------------------------------------------

async def test_node_verbs_answer_any_body(target: Target):
    @FUZZ
    @given(verb=st.sampled_from([subjects.PING, subjects.INFO, subjects.DEPLOY, subjects.WPING, subjects.AUCTION]),
           addressed=st.booleans(), payload=bodies)
    def fuzz(verb: str, addressed: bool, payload: bytes) -> None:
        if verb == subjects.WPING:
            node_target = target.canary_id if addressed else None
        elif verb == subjects.AUCTION:
            node_target = None  # every node answers; a bid that follows from a valid body expires unused
        else:
            node_target = target.node_id if addressed or verb != subjects.PING else None
        target.send(verb, node_target, payload)

    await run_fuzz(fuzz)


async def test_deploy_refuses_structured_nonsense(target: Target):
    @FUZZ
    @given(body=deploy_requests(), claim=st.one_of(st.none(), claim_tokens))
    def fuzz(body: dict[str, Any], claim: str | None) -> None:
        code = target.send(subjects.DEPLOY, target.node_id, json.dumps(body).encode(), claim=claim)
        assert code is not None, f"a fuzzed deploy succeeded: {body}"

    await run_fuzz(fuzz)
    assert len([c for c in target.codes if c != 400]) >= 1, f"nothing got past validation: {target.codes}"


async def test_workload_verbs_and_odd_subjects(target: Target):
    @FUZZ
    @given(verb=st.sampled_from([subjects.UNDEPLOY, subjects.WPING, subjects.PING, subjects.INFO, subjects.DEPLOY]),
           namespace=st.one_of(st.just("default"), valid_token, subject_token),
           which=st.one_of(st.just("canary"), st.just("node"), subject_token), payload=bodies)
    def fuzz(verb: str, namespace: str, which: str, payload: bytes) -> None:
        workload_target = {"canary": target.canary_id, "node": target.node_id}.get(which, which)
        if verb == subjects.UNDEPLOY and workload_target == target.canary_id and undeploy_would_succeed(payload):
            payload = b'{"grace_ms": "soon"}'  # keep the canary: a valid UNDEPLOY would stop it
        target.send(verb, workload_target, payload, namespace)

    await run_fuzz(fuzz)


async def test_lameduck_last_answers_any_body(target: Target):
    """LAMEDUCK ignores its body and drains the node, so it is fuzzed last, on a node of its own."""
    @settings(FUZZ, max_examples=100)
    @given(namespace=st.one_of(st.just("default"), subject_token), payload=bodies)
    def fuzz(namespace: str, payload: bytes) -> None:
        target.send(subjects.LAMEDUCK, target.node_id, payload, namespace)

    await run_fuzz(fuzz)
    assert target.tried >= 100
    code, ping = await control(target.nc, "PING", target.node_id)
    assert code is None and ping["state"] == "lameduck"
    # The in-process node keeps serving in lame duck (only `run()` exits): the fixture checks the canary.


def test_strategies_cover_every_verb_the_node_answers():
    fuzzed = {subjects.PING, subjects.INFO, subjects.DEPLOY, subjects.WPING, subjects.UNDEPLOY, subjects.LAMEDUCK,
              subjects.AUCTION}
    assert fuzzed == set(subjects.VERBS)
