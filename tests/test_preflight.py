"""`nex node preflight` on this host: every check, the exit status, and the fixes it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import sandbox_verdict
from nex.node.preflight import Status, check_disk, check_state_dir

CHECKS = ["OCI runtime", "cgroups", "user namespaces", "namespaces", "seccomp", "nats-server",
          "state dir", "free disk", "QuickJS", "wasmtime", "/dev/kvm"]


def preflight(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nex", "node", "preflight", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.fixture
def no_oci_runtime(tmp_path: Path) -> dict[str, str]:
    """A PATH without runc and crun (nor anything else)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    return {"PATH": str(empty)}


async def test_this_host_passes_and_every_check_is_listed(tmp_path):
    state_dir = tmp_path / "state"
    result = preflight("--state-dir", str(state_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in CHECKS:
        assert any(line[7:].startswith(name + " ") for line in lines), f"{name} is not listed"
    assert not any(line.startswith("[FAIL]") for line in lines)
    verdict = await sandbox_verdict(tmp_path / "probe")
    summary = lines[-1]
    if verdict is None:
        assert summary.endswith("--sandbox auto: native workloads run sandboxed by runc") or "crun" in summary
    else:
        assert "native workloads run as plain processes" in summary
    assert not state_dir.exists()  # preflight looks, the node creates


async def test_json_lists_each_check_with_its_status(tmp_path):
    result = preflight("--state-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [c["name"] for c in report["checks"]] == CHECKS
    assert report["ok"] is True and report["state_dir"] == str(tmp_path) and report["sandbox"] == "auto"
    for check in report["checks"]:
        assert check["status"] in {s.value for s in Status} and check["detail"]
        if check["status"] in ("warn", "fail"):
            assert check["fix"], check
    state_dir = next(c for c in report["checks"] if c["name"] == "state dir")
    assert state_dir == {"name": "state dir", "status": "ok", "detail": f"{tmp_path} is writable", "fix": None}


async def test_sandbox_oci_passes_where_the_host_can_sandbox(tmp_path):
    if (reason := await sandbox_verdict(tmp_path / "probe")) is not None:
        pytest.skip(f"this host cannot sandbox: {reason}")
    result = preflight("--state-dir", str(tmp_path), "--sandbox", "oci")
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[0].startswith("[ ok ] OCI runtime")


def test_without_runc_sandbox_oci_fails_and_says_how_to_fix_it(tmp_path, no_oci_runtime):
    result = preflight("--state-dir", str(tmp_path), "--sandbox", "oci", env=no_oci_runtime)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[FAIL] OCI runtime") and "neither runc nor crun is on PATH" in lines[0]
    assert lines[1].strip() == "fix: apt-get install runc"
    assert lines[-1].endswith("the node cannot sandbox and would refuse to start (--sandbox oci)")


def test_without_runsc_sandbox_gvisor_fails_and_says_how_to_fix_it(tmp_path, no_oci_runtime):
    result = preflight("--state-dir", str(tmp_path), "--sandbox", "gvisor", env=no_oci_runtime)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[FAIL] OCI runtime") and "runsc is not on PATH" in lines[0]
    assert lines[1].strip() == "fix: apt-get install runsc"
    assert lines[-1].endswith("the node cannot sandbox and would refuse to start (--sandbox gvisor)")


def test_without_runc_auto_only_warns(tmp_path, no_oci_runtime):
    result = preflight("--state-dir", str(tmp_path), "--json", env=no_oci_runtime)
    assert result.returncode == 0
    oci = json.loads(result.stdout)["checks"][0]
    assert oci["status"] == "warn" and "plain processes" in oci["detail"] and oci["fix"] == "apt-get install runc"


def test_with_sandbox_none_the_runtime_is_not_needed(tmp_path, no_oci_runtime):
    result = preflight("--state-dir", str(tmp_path), "--sandbox", "none", "--json", env=no_oci_runtime)
    assert result.returncode == 0
    oci = json.loads(result.stdout)["checks"][0]
    assert oci["status"] == "info" and "not used with --sandbox none" in oci["detail"]


def test_a_state_dir_that_cannot_be_created_fails_with_the_fix(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = preflight("--state-dir", str(blocker / "state"))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("[FAIL] state dir"))
    assert f"{blocker / 'state'} cannot be created: {blocker} is not a directory" in lines[index]
    assert lines[index + 1].strip().startswith("fix: ")
    assert blocker.read_text() == "not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to any directory")
def test_a_read_only_state_dir_fails_with_the_fix(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o500)
    result = check_state_dir(state_dir)
    assert result.status == Status.FAIL and "is not writable" in result.detail
    assert result.fix.startswith("chown -R ")


def test_a_missing_state_dir_under_a_read_only_parent_says_how_to_make_it(tmp_path, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    # As root every directory is writable: the access check is what the verdict turns on.
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != parent and os.path.exists(path))
    result = check_state_dir(parent / "nex" / "node")
    assert result.status == Status.FAIL
    assert result.detail == f"{parent / 'nex' / 'node'} does not exist and {parent} is not writable"
    assert result.fix.startswith(f"sudo mkdir -p {parent / 'nex' / 'node'} && sudo chown ")


def test_low_disk_is_a_warning_with_a_fix(tmp_path):
    result = check_disk(tmp_path, minimum=1 << 50)  # 1 PiB: more than any test disk has
    assert result.status == Status.WARN and "under 1048576 GiB" in result.detail
    assert result.fix and f"df -h {tmp_path}" in result.fix
    assert check_disk(tmp_path, minimum=1).status == Status.OK


@pytest.mark.parametrize("args, message", [
    (["--sandbox", "vm"], "'vm' is not one of 'auto', 'oci', 'gvisor', 'none'"),
    (["--config", "/nonexistent/node.toml"], "/nonexistent/node.toml"),
])
def test_bad_options_are_refused(args, message):
    result = preflight(*args)
    assert result.returncode != 0 and result.stdout == ""
    assert message in result.stderr
