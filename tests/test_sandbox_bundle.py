"""The OCI bundle as pure data: what config.json says, checked without running anything."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from nex.api.models import Limits, NetworkMode
from nex.reaper import Reaper
from nex.sandbox.bundle import HOST_ID_BASE, NOBODY, BindMount, ContainerSpec, config, write_bundle
from nex.sandbox.probe import exit_zero_elf
from nex.sandbox.runner import exit_result


def spec(tmp_path, **extra) -> ContainerSpec:
    return ContainerSpec(id="nex-abc", rootfs=tmp_path / "rootfs", args=["/bin/x", "a"], **extra)


def test_the_sandbox_drops_everything_by_default(tmp_path):
    c = config(spec(tmp_path))
    process, linux = c["process"], c["linux"]
    assert all(caps == [] for caps in process["capabilities"].values())
    assert process["noNewPrivileges"] is True and process["terminal"] is False
    assert process["user"]["uid"] == NOBODY and process["user"]["gid"] == NOBODY
    assert c["root"]["readonly"] is True
    assert {n["type"] for n in linux["namespaces"]} == {"pid", "mount", "ipc", "uts", "user", "network"}
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": HOST_ID_BASE, "size": 65536}]
    assert linux["seccomp"]["defaultAction"] == "SCMP_ACT_ALLOW"
    denied = {n for rule in linux["seccomp"]["syscalls"] if "args" not in rule for n in rule["names"]}
    assert {"unshare", "setns", "bpf", "ptrace", "mount", "keyctl", "io_uring_setup"} <= denied
    tmp = next(m for m in c["mounts"] if m["destination"] == "/tmp")
    assert tmp["type"] == "tmpfs"
    assert {m["destination"] for m in c["mounts"]} == {"/proc", "/dev", "/dev/pts", "/dev/shm", "/tmp"}
    assert "memory" not in linux["resources"] and "pids" not in linux["resources"]


def test_limits_become_cgroup_settings(tmp_path):
    res = config(spec(tmp_path, limits=Limits(memory_mib=64, cpus=0.25, pids=32)))["linux"]["resources"]
    assert res["memory"] == {"limit": 64 << 20}
    assert res["cpu"] == {"period": 100_000, "quota": 25_000}
    assert res["pids"] == {"limit": 32}


def test_network_host_keeps_the_hosts_network_namespace(tmp_path):
    namespaces = config(spec(tmp_path, network=NetworkMode.HOST))["linux"]["namespaces"]
    assert "network" not in {n["type"] for n in namespaces}


def test_bind_mounts_are_read_only_unless_asked(tmp_path):
    mounts = config(spec(tmp_path, mounts=[BindMount(tmp_path, "/data"), BindMount(tmp_path, "/out", False)]))["mounts"]
    data, out = mounts[-2], mounts[-1]
    assert data["destination"] == "/data" and "ro" in data["options"]
    assert out["destination"] == "/out" and "rw" in out["options"]


def test_a_bad_spec_fails_before_anything_runs(tmp_path):
    with pytest.raises(ValueError) as no_args:
        ContainerSpec(id="nex-x", rootfs=tmp_path, args=[])
    with pytest.raises(ValueError) as bad_user:
        ContainerSpec(id="nex-x", rootfs=tmp_path, args=["/x"], user=(70000, 0))
    assert "argument" in str(no_args.value) and "outside the mapped range" in str(bad_user.value)


def test_write_bundle_makes_the_mount_points(tmp_path):
    s = spec(tmp_path)
    s.rootfs.mkdir()
    path = write_bundle(s, tmp_path / "bundle")
    assert json.loads(path.read_text())["process"]["args"] == ["/bin/x", "a"]
    assert stat.S_IMODE((s.rootfs / "tmp").stat().st_mode) == 0o1777, "runc gives the tmpfs this mode"
    assert (s.rootfs / "proc").is_dir() and (s.rootfs / "dev").is_dir()


def test_exit_status_of_the_runtime_is_data():
    assert exit_result(0, False, None).success
    assert exit_result(3, False, None).exit_code == 3
    assert exit_result(137, False, None).signal == 9
    oom = exit_result(137, True, 32)
    assert oom.oom_killed and oom.signal == 9 and "32 MiB" in oom.error and not oom.success


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"), reason="probe ELF for x86_64/aarch64 only")
def test_the_detection_probe_is_a_real_program(tmp_path):
    program = tmp_path / "probe"
    program.write_bytes(exit_zero_elf())
    program.chmod(0o755)
    assert subprocess.run([str(program)]).returncode == 0


def test_the_reaper_removes_listed_containers(tmp_path):
    """A fake runtime records what the reaper asks of it when the node's pipe closes."""
    calls = tmp_path / "calls"
    runtime = tmp_path / "fake-runc"
    runtime.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    runtime.chmod(0o755)
    reaper = Reaper()
    reaper.watch_container(str(runtime), "/state/runc", "nex-a")
    reaper.watch_container(str(runtime), "/state/runc", "nex-b")
    reaper.release_container(str(runtime), "/state/runc", "nex-b")
    reaper.close()
    assert calls.read_text().splitlines() == ["--root /state/runc delete --force nex-a"]
