"""The wire contract, fed bytes: no server, no I/O."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nex.api import errors, subjects
from nex.api.models import DeployRequest, Lifecycle, NodePing, UndeployResponse, parse_request
from nex.api.schema import SCHEMA_MODELS, render

DOCS = Path(__file__).parent.parent / "docs"


def test_subjects_follow_the_layout():
    assert subjects.control("default", "DEPLOY", "N1") == "$NEX.SVC.default.control.DEPLOY.N1"
    assert subjects.control("*", "PING") == "$NEX.SVC.*.control.PING"
    assert subjects.logs("ns", "w1", "stderr") == "$NEX.FEED.ns.logs.w1.stderr"
    assert subjects.events("ns", "workload_started") == "$NEX.FEED.ns.events.workload_started"
    assert subjects.namespace_of("$NEX.SVC.team-a.control.PING") == "team-a"
    with pytest.raises(ValueError):
        subjects.namespace_of("foo.bar")


def test_lifecycle_defaults_by_type():
    js = DeployRequest.model_validate({"name": "f", "type": "javascript", "triggers": [{"subject": "a.b"}],
                                       "artifact": {"uri": "file:///f.js", "sha256": "a" * 64}})
    native = DeployRequest.model_validate({"name": "s", "type": "native",
                                           "artifact": {"uri": "file:///s", "sha256": "a" * 64}})
    assert js.lifecycle == Lifecycle.FUNCTION and native.lifecycle == Lifecycle.SERVICE


@pytest.mark.parametrize("body, words", [
    ({"name": "s", "type": "native", "lifecycle": "function", "triggers": [{"subject": "x"}]}, "cannot have lifecycle"),
    ({"name": "f", "type": "javascript", "lifecycle": "service"}, "cannot have lifecycle"),
    ({"name": "f", "type": "javascript", "triggers": [{"subject": "a..b"}]}, "invalid subject"),
    ({"name": "f", "type": "javascript", "triggers": [{"subject": "a.>.b"}]}, "'>' must be the last"),
    ({"name": "s", "type": "native", "env": {"A=B": "x"}}, "invalid environment variable name"),
])
def test_inconsistent_requests_are_refused(body, words):
    body = {"artifact": {"uri": "file:///a", "sha256": "a" * 64}, **body}
    with pytest.raises(errors.BadRequest) as caught:
        parse_request(DeployRequest, json.dumps(body).encode())
    assert words in caught.value.message


def test_error_round_trips_through_the_wire_form():
    payload, headers = errors.WorkloadNotFound("abc").encode()
    assert headers == {"Nats-Service-Error-Code": "404", "Nats-Service-Error": "no workload 'abc'"}
    back = errors.from_reply(payload, headers)
    assert isinstance(back, errors.NotFound) and back.code == 404 and back.message == "no workload 'abc'"
    payload, headers = errors.FunctionError("boom\nat line 1", "timeout").encode()
    assert headers["Nats-Service-Error"] == "boom at line 1", "header values stay on one line"
    back = errors.from_reply(payload, headers)
    assert isinstance(back, errors.FunctionError) and back.kind == "timeout" and back.message == "boom\nat line 1"
    assert errors.from_reply(b'{"ok":1}', {}) is None


def test_error_headers_without_a_json_body_still_decode():
    back = errors.from_reply(b"", {"Nats-Service-Error-Code": "409", "Nats-Service-Error": "busy"})
    assert isinstance(back, errors.Conflict) and back.message == "busy"


@pytest.mark.parametrize("name", sorted(SCHEMA_MODELS))
def test_schemas_in_docs_are_current(name):
    on_disk = (DOCS / "schemas" / f"{name}.json").read_text()
    assert on_disk == render(name), f"docs/schemas/{name}.json is stale: run `make schemas`"


def _json_blocks(text: str) -> list[dict]:
    blocks = []
    for block in re.findall(r"```json\n(.*?)```", text, re.S):
        if "..." not in block:
            blocks.append(json.loads(block))
    return blocks


def test_every_json_example_of_the_docs_is_valid():
    blocks = _json_blocks((DOCS / "control-api.md").read_text())
    assert len(blocks) >= 5
    for block in blocks:
        if "artifact" in block:
            DeployRequest.model_validate(block)
        elif "error" in block:
            errors.from_reply(json.dumps(block).encode(), {"Nats-Service-Error-Code": "400"})
        elif "uptime_s" in block:
            NodePing.model_validate(block)
        elif "exit" in block:
            UndeployResponse.model_validate(block)
