"""Every rejected control request leaves an audit event (who, what, why), never the body."""

from __future__ import annotations

import base64
import json

import pytest

from nex.api import claims, subjects
from nex.api.errors import BadRequest, Forbidden, InternalError, NexError
from nex.api.events import CloudEvent, EventType
from nex.node import audit
from nex.node.control import answer

from helpers import collect, control, eventually, file_artifact

SECRET = "hunter2-very-secret-value"
ISSUER = "A" * 56
REJECTED = subjects.events("default", EventType.REQUEST_REJECTED.value)


async def test_a_rejected_deploy_is_audited_without_its_secrets(node, nc, tmp_path):
    events = await collect(nc, subjects.events_filter("*"))
    body = {"name": "leaky", "type": "native",
            "env": {"PASSWORD": SECRET}, "sealed_env": "sealed-" + SECRET,
            "artifact": {"uri": f"file://{tmp_path}/{SECRET}", "sha256": "0" * 64}}
    code, reply = await control(nc, "DEPLOY", node.node_id, body,
                                headers={claims.CLAIM_HEADER: jwt({"iss": ISSUER, "token": SECRET})})
    assert code in (400, 403, 404)

    rejected = await eventually(lambda: [m for m in events if m.subject == REJECTED], timeout=5)
    assert len(rejected) == 1
    assert SECRET.encode() not in rejected[0].data
    event = CloudEvent.model_validate_json(rejected[0].data)
    assert event.event_type == "request_rejected" and event.source == f"nex/node/{node.node_id}"
    who, what, why = event.data["who"], event.data["what"], event.data["why"]
    assert who["claimed_issuer"] == ISSUER and who["reply_prefix"].startswith("_INBOX.")
    assert what["verb"] == "DEPLOY" and what["target"] == node.node_id
    assert why["code"] == code


def test_env_values_are_blanked_from_the_reason():
    data = json.dumps({"env": {"A": SECRET, "B": "ab"}, "sealed_env": "blob-" + SECRET}).encode()
    error = BadRequest(f"artifact file:///{SECRET} and blob-{SECRET}, ab")
    record = audit.rejection_record("$NEX.SVC.default.control.DEPLOY.N1", None, data, error)
    assert record["why"]["message"] == f"artifact file:///{audit.REDACTED} and {audit.REDACTED}, ab"


@pytest.mark.parametrize("verb, target, payload, code", [
    ("DEPLOY", "node", b"{not json", 400),
    ("UNDEPLOY", "survivor", b'{"grace_ms": -1}', 400),
])
async def test_each_refusal_is_audited_once(node, nc, programs, verb, target, payload, code):
    if target == "node":
        target = node.node_id
    else:
        _, workload = await control(nc, "DEPLOY", node.node_id, {
            "name": "survivor", "type": "native", "artifact": file_artifact(programs["ticker"])})
        target = workload["id"]
    events = await collect(nc, REJECTED)
    got, _ = await control(nc, verb, target, payload)
    assert got == code
    await eventually(lambda: events, timeout=5)
    assert json.loads(events[0].data)["data"]["what"]["verb"] == verb


async def test_successes_and_bad_namespaces_are_audited_where_they_belong(node, nc):
    events = await collect(nc, subjects.events_filter("*"))
    assert (await control(nc, "PING", node.node_id))[0] is None
    msg = await nc.request("$NEX.SVC.bad$ns.control.PING", b"", timeout=5)
    assert msg.headers["Nats-Service-Error-Code"] == "400"
    await eventually(lambda: [m for m in events if m.subject.endswith("request_rejected")], timeout=5)
    await nc.flush()
    rejected = [m for m in events if m.subject.endswith("request_rejected")]
    assert [m.subject for m in rejected] == [subjects.events("system", "request_rejected")]


# -- the record and answer(), without a node ---------------------------------------------

def jwt(payload: dict) -> str:
    encoded = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    return f"e30.{encoded}.sig"


@pytest.mark.parametrize("token, issuer", [
    (jwt({"iss": ISSUER}), ISSUER),
    (jwt({"iss": SECRET}), None),  # not an nkey: not echoed
    (jwt({"iss": ISSUER + "\n"}), None),
    (jwt({"iss": 7}), None),
    (jwt([ISSUER]), None),
    ("a.%%%.c", None),
    (ISSUER, None),
    (None, None),
])
def test_claim_issuer_is_read_defensively(token, issuer):
    record = audit.rejection_record("$NEX.SVC.default.control.DEPLOY.N1", "_INBOX.abc.7", b"{}", BadRequest("no"),
                                    token=token)
    assert record["who"] == {"subject": "$NEX.SVC.default.control.DEPLOY.N1", "reply_prefix": "_INBOX.abc",
                             "claimed_issuer": issuer}


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"[" * 100_000, b"[1]", b'"env"', b'{"env": 5}'])
def test_record_of_any_body_holds_no_body(data):
    record = audit.rejection_record("$NEX", None, data, BadRequest("x"))
    assert record["what"] == {"verb": None, "target": None, "subject": "$NEX", "body_bytes": len(data)}


async def test_answer_tells_refusals_only_and_survives_a_failing_audit():
    told: list[tuple[str, dict]] = []
    replies: list[tuple[bytes, dict | None]] = []

    async def reply(payload: bytes, headers: dict | None) -> None:
        replies.append((payload, headers))

    def failing(namespace: str, record: dict) -> None:
        raise RuntimeError("feed down")

    def raises(error: NexError):
        async def handler(namespace: str, data: bytes):
            raise error
        return handler

    subject = "$NEX.SVC.default.control.DEPLOY.N1"
    for error in (Forbidden("no"), InternalError("bug")):
        await answer(reply, subject, b"{}", raises(error), on_rejected=lambda ns, r: told.append((ns, r)))
    await answer(reply, subject, b"{}", raises(BadRequest("no")), on_rejected=failing)
    assert [ns for ns, _ in told] == ["default"] and told[0][1]["why"] == {"code": 403, "message": "no"}
    assert [h["Nats-Service-Error-Code"] for _, h in replies] == ["403", "500", "400"]
