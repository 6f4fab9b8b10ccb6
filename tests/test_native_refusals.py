"""A native artifact that cannot run on the chosen node is refused at deploy, with the reason, and
nothing starts; one that may run but depends on the host (a dynamically linked executable, a
script) runs on a node without a sandbox, with a warning the user sees. Real nodes (sandboxed by
runc, or plain processes), real binaries from gcc (tests/conftest.py), the `nex` CLI as a process."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from nex.api import subjects
from nex.node.node import Node
from nex.sandbox.runner import OciRunner

from helpers import collect, control, eventually, native_body, nex

sandboxed = pytest.mark.parametrize("node", ["oci"], indirect=True)
unsandboxed = pytest.mark.parametrize("node", ["none"], indirect=True)
both_modes = pytest.mark.parametrize("node", ["none", "oci"], indirect=True)


def loader_of(path: Path) -> str:
    """The dynamic loader ``path`` asks for, as readelf reads it."""
    headers = subprocess.run(["readelf", "-l", str(path)], capture_output=True, text=True, check=True).stdout
    return re.search(r"Requesting program interpreter: (\S+)\]", headers).group(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def processes_named(name: str) -> list[int]:
    """Live processes whose command line mentions ``name`` (a workload's argv[0] or /bin/<name>)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and name.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:
            pass
    return found


async def assert_nothing_started(nc, node: Node, name: str, events: list) -> None:
    """No workload listed, no process, no workload event, no container or bundle: as if never sent.
    (Each test that calls it has deployed nothing else.)"""
    code, info = await control(nc, "INFO", node.node_id)
    assert code is None and name not in [w["name"] for w in info["workloads"]]
    assert processes_named(name) == []
    await nc.flush()
    assert [m.subject for m in events if name.encode() in m.data] == []
    runner = OciRunner.find(node.state_dir)
    if runner is not None:
        assert await runner.list_containers() == []
        assert not runner.bundles_dir.is_dir() or list(runner.bundles_dir.iterdir()) == []


@sandboxed
async def test_a_sandboxed_node_refuses_a_dynamic_executable_naming_its_interpreter(node: Node, nc, linked):
    events = await collect(nc, subjects.events_filter("default"))
    loader = loader_of(linked["dynamic"])
    name = unique("dynamic")
    code, body = await control(nc, "DEPLOY", node.node_id, native_body(linked["dynamic"], name))
    assert code == 400
    reason = body["error"]["message"]
    assert f"dynamically linked (its interpreter is {loader})" in reason
    assert "link it statically (gcc -static, CGO_ENABLED=0 go build, cargo build --target" in reason
    await assert_nothing_started(nc, node, name, events)


@unsandboxed
async def test_a_node_without_a_sandbox_runs_a_dynamic_executable_with_a_warning(node: Node, nc, linked):
    logs = await collect(nc, subjects.logs_filter("default"))
    events = await collect(nc, subjects.events_filter("default"))
    loader = loader_of(linked["dynamic"])
    code, workload = await control(nc, "DEPLOY", node.node_id, native_body(linked["dynamic"], "dynamic"))
    assert code is None, workload
    assert workload["state"] == "running"
    [warning] = workload["warnings"]
    assert f"dynamically linked (its interpreter is {loader})" in warning and "link it statically" in warning
    # It does run: the host has the loader and libc.
    await eventually(lambda: any(m.data == b"tick 2" for m in logs))

    code, info = await control(nc, "INFO", node.node_id)
    assert [w["warnings"] for w in info["workloads"] if w["id"] == workload["id"]] == [[warning]]
    started = await eventually(lambda: [m for m in events if m.subject.endswith("workload_started")])
    assert json.loads(started[0].data)["data"]["warnings"] == [warning]


@unsandboxed
async def test_a_static_executable_deploys_without_warnings(node: Node, nc, programs, linked):
    for path in [programs["ticker"], linked["static_pie"]]:
        if path is None:
            continue  # gcc -static-pie does not link here
        code, workload = await control(nc, "DEPLOY", node.node_id, native_body(path, unique("static")))
        assert code is None and workload["state"] == "running"
        assert "warnings" not in workload


@sandboxed
async def test_a_static_pie_runs_in_the_sandbox(node: Node, nc, linked):
    if linked["static_pie"] is None:
        pytest.skip("gcc -static-pie does not link here")
    logs = await collect(nc, subjects.logs_filter("default"))
    code, workload = await control(nc, "DEPLOY", node.node_id, native_body(linked["static_pie"], "pie"))
    assert code is None and "warnings" not in workload
    await eventually(lambda: any(m.data == b"tick 2" for m in logs))


@both_modes
@pytest.mark.parametrize("build, words", [
    ("shared", "is a shared library, not an executable"),
    ("object", "is an object file (.o), not an executable"),
    ("other_arch", f"and this node is {os.uname().machine}"),
])
async def test_what_cannot_run_anywhere_is_refused_on_every_node(node: Node, nc, linked, build, words):
    events = await collect(nc, subjects.events_filter("default"))
    name = unique(build.replace("_", "-"))
    code, body = await control(nc, "DEPLOY", node.node_id, native_body(linked[build], name))
    assert code == 400 and words in body["error"]["message"]
    await assert_nothing_started(nc, node, name, events)


@both_modes
async def test_a_text_file_is_refused_on_every_node(node: Node, nc, tmp_path):
    notes = tmp_path / "notes"
    notes.write_text("echo hi\n")
    code, body = await control(nc, "DEPLOY", node.node_id, native_body(notes, "notes"))
    assert code == 400 and "not an ELF executable: it is neither an ELF file nor a script" in body["error"]["message"]


@sandboxed
async def test_a_sandboxed_node_refuses_a_script(node: Node, nc, tmp_path):
    events = await collect(nc, subjects.events_filter("default"))
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\necho from a script\n")
    name = unique("script")
    code, body = await control(nc, "DEPLOY", node.node_id, native_body(script, name, lifecycle="job"))
    assert code == 400
    assert "is a script (#!/bin/sh), and a sandboxed node runs it alone, with no /bin/sh" in body["error"]["message"]
    await assert_nothing_started(nc, node, name, events)


@unsandboxed
async def test_a_node_without_a_sandbox_runs_a_script_with_a_warning(node: Node, nc, tmp_path):
    logs = await collect(nc, subjects.logs_filter("default"))
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\necho from a script \"$1\"\n")
    code, workload = await control(nc, "DEPLOY", node.node_id,
                                   native_body(script, "script", lifecycle="job", argv=["arg"]))
    assert code is None, workload
    assert "is a script (#!/bin/sh)" in workload["warnings"][0]
    await eventually(lambda: any(m.data == b"from a script arg" for m in logs))

    missing = tmp_path / "missing.sh"
    missing.write_text("#!/usr/bin/no-such-shell\necho hi\n")
    code, body = await control(nc, "DEPLOY", node.node_id, native_body(missing, "missing", lifecycle="job"))
    assert code == 400 and "this node has no /usr/bin/no-such-shell" in body["error"]["message"]


# -- what a user of the CLI sees ------------------------------------------------------------


@sandboxed
async def test_nex_devrun_shows_why_a_sandboxed_node_refuses(node: Node, nats_server, linked):
    loader = loader_of(linked["dynamic"])
    code, out, err = await nex("--server", nats_server.url, "devrun", str(linked["dynamic"]), "--name", "dyn",
                               "--node", node.node_id)
    assert code == 1 and out == ""
    assert err.startswith("nex: error: the native artifact is dynamically linked "
                          f"(its interpreter is {loader}), and a sandboxed node runs it alone"), err
    code, out, err = await nex("--server", nats_server.url, "workload", "ls", "--json")
    assert code == 0 and "dyn" not in [w["name"] for w in json.loads(out)]


@unsandboxed
async def test_nex_devrun_and_workload_info_show_the_warning(node: Node, nats_server, linked):
    loader = loader_of(linked["dynamic"])
    url = nats_server.url
    code, out, err = await nex("--server", url, "devrun", str(linked["dynamic"]), "--name", "dyn",
                               "--node", node.node_id)
    assert code == 0, err
    assert "native service 'dyn' is running" in out
    assert err.startswith(f"nex: warning: the native artifact is dynamically linked (its interpreter is {loader})")

    code, out, err = await nex("--server", url, "workload", "info", "dyn")
    assert code == 0, err
    assert re.search(rf"Warning\s+the native artifact is dynamically linked \(its interpreter is {loader}\)", out)
