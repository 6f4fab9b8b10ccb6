"""Sandboxed native workloads: what they cannot see or do, their limits, and what they leave behind.

Real runc, real runsc (gVisor), real cgroups, a static C probe (tests/programs/probe.c).
The containment tests run under both tiers (``every_tier``); each skips, saying why, on
a host where that runtime does not work.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from pathlib import Path
from urllib.parse import urlparse

import pytest

from nex.api import subjects
from nex.node.node import Node
from nex.sandbox import cgroups
from nex.sandbox.bundle import HOST_ID_BASE, ID_RANGE, NOBODY
from nex.sandbox.gvisor import PIDS_BASE, PIDS_PER_TASK
from nex.sandbox.runner import OciRunner

from helpers import ARTIFACT_ROOTS, alive, collect, control, eventually, native_body, nex, start_node, wait_for_node

sandboxed = pytest.mark.parametrize("node", ["oci"], indirect=True)
every_tier = pytest.mark.parametrize("node", ["oci", "gvisor"], indirect=True)


def under_gvisor(node: Node) -> bool:
    return node.oci is not None and node.oci.gvisor is not None


@pytest.fixture(autouse=True)
async def no_container_outlives_a_test(tmp_path):
    """Even a failed test leaves nothing: sweep every runc and runsc root its nodes made."""
    yield
    for root in [r for r in [*tmp_path.rglob("runc"), *tmp_path.rglob("runsc")] if r.is_dir()]:
        for runner in OciRunner.find_all(root.parent):
            await runner.sweep()
            shutil.rmtree(runner.bundles_dir, ignore_errors=True)


async def run_job(node: Node, nc, body: dict) -> tuple[dict, list[str]]:
    """Deploy a job, wait for its end: (the end event's data, its stdout lines)."""
    logs = await collect(nc, subjects.logs_filter("default"))
    events = await collect(nc, subjects.events_filter("default"))
    code, workload = await control(nc, "DEPLOY", node.node_id, {**body, "lifecycle": "job"})
    assert code is None, workload
    ended = await eventually(lambda: [m for m in events if m.subject.rsplit(".", 1)[1] in
                                      ("workload_stopped", "workload_failed")], timeout=15)
    await nc.flush()
    lines = [m.data.decode() for m in logs if m.subject.split(".")[-2] == workload["id"]
             and m.subject.endswith("stdout")]
    return json.loads(ended[0].data)["data"], lines


def report(lines: list[str]) -> dict[str, str]:
    return dict(line.split(" ", 1) if " " in line else (line, "") for line in lines)


def container_left(workload_id: str) -> list[str]:
    """What a container of this workload left on the host: cgroups, mounts, processes."""
    path = f"/nex/nex-{workload_id}"
    left = [str(cgroups.controller_dir(c, path)) for c in ("memory", "pids", "cpu", "cpuacct")
            if cgroups.controller_dir(c, path) is not None and cgroups.controller_dir(c, path).exists()]
    left += [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if workload_id in line]
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and workload_id in Path(f"/proc/{entry}/cmdline").read_text():
                left.append(f"process {entry}")
        except OSError:
            pass
    return left


@every_tier
async def test_a_sandboxed_workload_sees_only_itself(node: Node, nc, programs):
    secret = node.state_dir / "node.nk"
    assert secret.exists()
    result, lines = await run_job(node, nc, native_body(
        programs["probe"], "probe", argv=["report", str(os.getpid()), str(secret), str(node.state_dir)]))
    seen = report(lines)
    assert "end" in seen, lines
    assert result["exit_code"] == 0
    assert seen["read_shadow"] == "No such file or directory", "host files are not in the rootfs"
    assert f"{secret}  No such file or directory" in lines[lines.index(next(l for l in lines if "read_path" in l))]
    assert seen["kill_node"] == "No such process", "host processes are invisible and out of reach"
    assert seen["proc_pids"] == "1", "/proc shows the workload alone"
    assert seen["write_root"] == "Read-only file system" and seen["write_bin"] == "Read-only file system"
    assert seen["write_tmp"] == "ok", "/tmp is writable"
    assert seen["unshare_user"] == "Operation not permitted", "seccomp denies new namespaces"
    assert seen.get("unshare_user_i386", "Operation not permitted") == "Operation not permitted", \
        "the filter covers the 32-bit ABI too"
    assert seen["uid"] == str(NOBODY) and seen["gid"] == str(NOBODY)
    assert seen["CapEff"] == "0000000000000000" and seen["CapBnd"] == "0000000000000000"
    # gVisor's /proc/self/status has no NoNewPrivs line; its seccomp is the bundle's, applied by its kernel.
    assert seen.get("NoNewPrivs", "1") == "1" and seen["Seccomp"] == "2"
    assert under_gvisor(node) != ("NoNewPrivs" in seen)
    assert seen["net_ifaces"] == "lo", "network none: loopback only"
    assert seen["hostname"] == "probe"


@every_tier
async def test_network_host_shares_the_hosts_interfaces(node: Node, nc, programs):
    _, lines = await run_job(node, nc, native_body(programs["probe"], "probe", network="host", argv=["report"]))
    interfaces = report(lines)["net_ifaces"].split()
    host = [line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]]
    assert sorted(interfaces) == sorted(host)


@every_tier
async def test_network_none_cannot_reach_the_nats_server_on_the_hosts_loopback(node: Node, nc, programs,
                                                                                nats_server):
    """What a tenant's service would try first: the node's NATS server on 127.0.0.1. With network none
    its loopback is its own (runc: a namespace; gVisor: gVisor's network stack); with host it is not."""
    port = str(urlparse(nats_server.url).port)
    _, lines = await run_job(node, nc, native_body(programs["probe"], "probe", argv=["connect", port]))
    assert report(lines)["connect"] == "Connection refused", lines
    _, lines = await run_job(node, nc, native_body(programs["probe"], "probe", argv=["connect", port],
                                                   network="host"))
    assert report(lines)["connect"] == "ok", "the probe does connect where there is something to reach"


def host_uid(pid: int) -> int:
    uid_line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("Uid:"))
    return int(uid_line.split()[1])


@every_tier
async def test_stop_ends_every_process_and_leaves_nothing(node: Node, nc, programs):
    node.config.stop_grace_s = 0.3
    code, workload = await control(nc, "DEPLOY", node.node_id, native_body(programs["stubborn"], "stubborn"))
    assert code is None, workload
    procs = cgroups.controller_dir("pids", f"/nex/nex-{workload['id']}") / "cgroup.procs"
    if under_gvisor(node):
        # The pid is gVisor's kernel: host nobody, in a user namespace that maps nothing else; the
        # gofer, which opens the workload's files, is the root of the workload's own range.
        assert host_uid(workload["pid"]) == NOBODY
        assert Path(f"/proc/{workload['pid']}/uid_map").read_text().split() == [str(NOBODY), str(NOBODY), "1"]
        members = await eventually(lambda: len(procs.read_text().split()) >= 3 and procs.read_text().split())
        gofer = [int(p) for p in members if b"gofer" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(gofer) == 1 and (host_uid(gofer[0]) - HOST_ID_BASE) % ID_RANGE == 0
    else:
        uid = host_uid(workload["pid"])
        assert uid >= HOST_ID_BASE and (uid - HOST_ID_BASE) % ID_RANGE == NOBODY, \
            "nobody inside is an unmapped uid outside, in the workload's own range"
        members = await eventually(lambda: len(procs.read_text().split()) == 2 and procs.read_text().split())

    code, stopped = await control(nc, "UNDEPLOY", workload["id"])
    assert code is None and stopped["exit"]["signal"] == signal.SIGKILL, "SIGTERM ignored, then SIGKILL"
    assert not any(alive(int(p)) for p in members)
    assert container_left(workload["id"]) == []
    assert await node.oci.list_containers() == []


@every_tier
async def test_a_crash_leaves_nothing(node: Node, nc, programs):
    result, _ = await run_job(node, nc, native_body(programs["job"], "crash", argv=["3"]))
    assert result["exit_code"] == 3 and result["state"] == "failed"
    assert container_left(result["workload_id"]) == []
    assert await node.oci.list_containers() == []
    assert not any(node.oci.bundles_dir.iterdir()), "the bundle is removed"


@every_tier
async def test_memory_over_the_limit_is_an_oom_kill(node: Node, nc, programs):
    result, lines = await run_job(node, nc, native_body(
        programs["probe"], "hog", argv=["hog", "256"], limits={"memory_mib": 32}))
    assert result["oom_killed"] is True and result["signal"] == signal.SIGKILL
    assert "out of memory" in result["error"] and result["state"] == "failed"
    assert "hog done" not in lines


@every_tier
@pytest.mark.parametrize("bomb", ["forkbomb", "threads"])
async def test_a_fork_bomb_stops_at_the_pids_limit(node: Node, nc, programs, bomb):
    """Processes or threads: both count (and a threaded program runs at all: under gVisor a seccomp
    rule for clone3 once kept every thread from starting)."""
    logs = await collect(nc, subjects.logs_filter("default"))
    code, workload = await control(nc, "DEPLOY", node.node_id, native_body(
        programs["probe"], "bomb", argv=[bomb], limits={"pids": 20}))
    assert code is None, workload
    prefix = b"forks " if bomb == "forkbomb" else b"threads "
    line = await eventually(lambda: next((m.data.decode() for m in logs if m.data.startswith(prefix)), None),
                            timeout=10)
    forks = int(line.split()[1])
    assert 10 <= forks < 20 and "Resource temporarily unavailable" in line, line
    _, info = await control(nc, "INFO", node.node_id)
    if under_gvisor(node):
        # The limit is the guest's (RLIMIT_NPROC in gVisor's kernel); the cgroup also counts gVisor's own
        # tasks, with room for them (nex.sandbox.gvisor), so the sandbox lives on.
        assert 20 < info["workloads"][0]["usage"]["pids"] < PIDS_BASE + PIDS_PER_TASK * 20
        assert info["workloads"][0]["state"] == "running"
    else:
        assert info["workloads"][0]["usage"]["pids"] == 20
    code, stopped = await control(nc, "UNDEPLOY", workload["id"], {"grace_ms": 200})
    assert code is None
    assert container_left(workload["id"]) == []


@sandboxed
async def test_cpu_quota_holds_and_usage_shows_in_info(node: Node, nc, programs):
    code, workload = await control(nc, "DEPLOY", node.node_id, native_body(
        programs["probe"], "spin", argv=["spin"], limits={"cpus": 0.2, "memory_mib": 16}))
    assert code is None, workload

    async def usage():
        _, info = await control(nc, "INFO", node.node_id)
        return info["workloads"][0]["usage"]
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.3)
    first, t0 = await usage(), loop.time()
    await asyncio.sleep(1.2)
    second, t1 = await usage(), loop.time()
    share = (second["cpu_seconds"] - first["cpu_seconds"]) / (t1 - t0)
    assert 0.05 < share < 0.3, f"a busy loop got {share:.2f} CPUs under a quota of 0.2"
    assert 0 < second["memory_bytes"] < 16 << 20 and second["pids"] == 1
    code, out = await control(nc, "WPING", workload["id"])
    assert out["workloads"][0]["usage"]["cpu_seconds"] >= second["cpu_seconds"]
    await control(nc, "UNDEPLOY", workload["id"], {"grace_ms": 100})


# -- a node killed with SIGKILL, as a real `nex node up` process ------------------------------------

def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
        except (OSError, ValueError):
            pass
    return found


def group_of(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue
        if entry.isdigit() and int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry))
    return found


@pytest.fixture
async def can_sandbox(tmp_path):
    from conftest import sandbox_verdict

    reason = await sandbox_verdict(tmp_path / "probe")
    if reason is not None:
        pytest.skip(f"this host cannot sandbox: {reason}")


# Under gVisor the reaper's case only: the next start's cleanup of what a dead node left is the
# conformance suite's cleanup from a persisted handle, which runs under gVisor too.
@pytest.mark.parametrize("sandbox, reaper_dies_too", [("oci", False), ("oci", True), ("gvisor", False)])
async def test_a_sigkilled_node_leaves_no_container(nats_server, nc, tmp_path, programs, sandbox,
                                                    reaper_dies_too):
    from conftest import sandbox_verdict

    reason = await sandbox_verdict(tmp_path / "probe", sandbox)
    if reason is not None:
        pytest.skip(f"this host cannot sandbox with {sandbox}: {reason}")
    state = tmp_path / "state"
    args = ["--server", nats_server.url, "--state-dir", str(state), "--name", "doomed", "--sandbox", sandbox]
    process = await start_node(*args)
    ping = await wait_for_node(nc, "doomed")
    expected = {"oci": ("container", {"runc", "crun"}), "gvisor": ("gvisor", {"runsc"})}[sandbox]
    assert ping["tags"]["nex.isolation"] == expected[0] and ping["tags"]["nex.sandbox"] in expected[1]
    workloads = []
    for program in ("ticker", "stubborn"):
        code, workload = await control(nc, "DEPLOY", ping["node_id"], native_body(programs[program], program))
        assert code is None, workload
        workloads.append(workload)
    pids = [w["pid"] for w in workloads]
    reaper = next(p for p in children(process.pid) if "nex.reaper" in Path(f"/proc/{p}/cmdline").read_text())

    if reaper_dies_too:
        os.kill(reaper, signal.SIGKILL)  # nothing is left to clean up but the next start
    process.kill()
    await process.wait()
    if reaper_dies_too:
        await asyncio.sleep(0.5)
        assert all(alive(pid) for pid in pids), "without the reaper the containers outlive the node"
    else:
        await eventually(lambda: not any(alive(pid) for pid in pids))

    process = await start_node(*args)
    await wait_for_node(nc, "doomed")
    await eventually(lambda: not any(alive(pid) for pid in pids))
    for workload in workloads:
        assert container_left(workload["id"]) == []
    assert not list((state / "handles").glob("*.json"))
    for root in (state / "runc", state / "runsc"):
        assert not root.exists() or not [p for p in root.iterdir()], f"no {root.name} state left"
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 15) == 0


# -- choosing the sandbox ---------------------------------------------------------------------------

@pytest.mark.parametrize("sandbox, says", [
    ("oci", "--sandbox oci: no OCI runtime works"),
    ("gvisor", "--sandbox gvisor: gVisor does not run a container on this host (runsc is not on PATH)"),
])
async def test_sandbox_oci_or_gvisor_refuses_to_start_without_a_runtime(nats_server, tmp_path, sandbox, says):
    empty = tmp_path / "bin"
    empty.mkdir()
    process = await start_node("--server", nats_server.url, "--state-dir", str(tmp_path / "s"),
                               "--sandbox", sandbox, env={"PATH": str(empty)})
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    text = output.decode()
    assert process.returncode == 1
    assert text.startswith(f"nex: error: {says}") and "Traceback" not in text
    assert len(text.strip().splitlines()) == 1


async def test_sandbox_gvisor_refuses_to_start_on_a_platform_that_does_not_run(nats_server, tmp_path):
    """systrap is unknown to this host's runsc: the node says so instead of starting (kvm would
    hang here until the probe's timeout)."""
    if shutil.which("runsc") is None:
        pytest.skip("runsc is not on PATH")
    runner, _ = await OciRunner.probe_gvisor(tmp_path / "probe", platform="systrap")
    if runner is not None:
        pytest.skip("this runsc runs the systrap platform")
    process = await start_node("--server", nats_server.url, "--state-dir", str(tmp_path / "s"),
                               "--sandbox", "gvisor", "--gvisor-platform", "systrap")
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    text = output.decode()
    assert process.returncode == 1 and "Traceback" not in text
    assert text.startswith("nex: error: --sandbox gvisor: gVisor does not run a container on this host "
                           "(runsc --platform=systrap: "), text


async def test_auto_without_a_runtime_runs_plain_processes_tagged_unsafe(nats_server, tmp_path, monkeypatch,
                                                                        nc, programs):
    from nex.node.config import NodeConfig

    monkeypatch.setenv("PATH", str(tmp_path))
    node = Node(NodeConfig(artifact_roots=ARTIFACT_ROOTS,
                           server=nats_server.url, state_dir=tmp_path / "n", sandbox="auto"))
    await node.start()
    try:
        assert node.oci is None and node.tags["nex.unsafe"] == "true"
        _, ping = await control(nc, "PING", node.node_id)
        assert ping["tags"]["nex.unsafe"] == "true"
        code, error = await control(nc, "DEPLOY", node.node_id, native_body(programs["ticker"], "t", network="none"))
        assert code == 400 and "sandbox" in error["error"]["message"]
    finally:
        await node.shutdown()


@sandboxed
async def test_a_sandboxed_node_says_so(node: Node, nc):
    _, ping = await control(nc, "PING", node.node_id)
    assert "nex.unsafe" not in ping["tags"] and ping["tags"]["nex.sandbox"] in ("runc", "crun")


@sandboxed
async def test_devrun_limits_reach_the_sandbox_and_usage_shows(node: Node, nc, nats_server, programs):
    code, out, err = await nex(
        "devrun", str(programs["probe"]), "--argv", "spin", "--cpus", "0.5", "--pids", "8", "--memory", "32",
        "--network", "none", "--timeout", "1500", "--json", "--server", nats_server.url)
    assert code == 0, err
    summary = json.loads(out)
    given = {key: value for key, value in summary["limits"].items() if value is not None}
    assert given == {"memory_mib": 32, "cpus": 0.5, "pids": 8, "timeout_ms": 1500}
    limit = cgroups.controller_dir("memory", f"/nex/nex-{summary['id']}") / "memory.limit_in_bytes"
    if limit.parent.exists():  # cgroup v1
        assert int(limit.read_text()) == 32 << 20

    async def used():
        code, out, _ = await nex("workload", "info", summary["id"], "--json", "--server", nats_server.url)
        usage = json.loads(out)["usage"] if code == 0 else None
        return usage if usage and usage["cpu_seconds"] > 0.05 else None
    usage = await eventually(used, timeout=10, interval=0.2)
    assert usage["pids"] == 1 and usage["memory_bytes"] > 0
    code, out, _ = await nex("workload", "info", summary["id"], "--server", nats_server.url)
    assert code == 0 and "s CPU" in out and "MiB" in out and "1 pids" in out, out
    code, out, _ = await nex("node", "info", node.node_id, "--server", nats_server.url)
    assert code == 0 and "USAGE" in out and "CPU" in out, out
    code, out, err = await nex("workload", "stop", summary["id"], "--server", nats_server.url)
    assert code == 0, err


@pytest.mark.parametrize("before, after", [("none", "oci"), ("oci", "none")])
async def test_a_node_cleans_up_after_a_dead_node_of_the_other_mode(nats_server, nc, tmp_path, programs,
                                                                    can_sandbox, before, after):
    """Node and reaper killed together; the next start, sandboxed or not, ends what they left."""
    state = tmp_path / "state"
    args = ["--server", nats_server.url, "--state-dir", str(state), "--name", "switch"]
    process = await start_node(*args, "--sandbox", before)
    ping = await wait_for_node(nc, "switch")
    logs = await collect(nc, subjects.logs_filter("default"))
    code, workload = await control(nc, "DEPLOY", ping["node_id"], native_body(programs["stubborn"], "stubborn"))
    assert code is None, workload
    # stubborn forks: its group is the workload (a plain leader dies with the node, its child does not).
    group = await eventually(lambda: len(group_of(workload["pid"])) == 2 and group_of(workload["pid"]))
    # Both have written their line: a child that first writes once its node is dead dies of SIGPIPE
    # (its stdout is a pipe to the node), as happens when a loaded machine runs it late.
    await eventually(lambda: {m.data.split()[0] for m in logs if m.data} >= {b"parent", b"child"}, timeout=10)
    reaper = next(p for p in children(process.pid) if "nex.reaper" in Path(f"/proc/{p}/cmdline").read_text())
    os.kill(reaper, signal.SIGKILL)
    process.kill()
    await process.wait()
    try:
        await asyncio.sleep(0.3)
        assert any(alive(pid) for pid in group), "the workload outlived its node and reaper"

        process = await start_node(*args, "--sandbox", after)
        await wait_for_node(nc, "switch")
        await eventually(lambda: not any(alive(pid) for pid in group))
        assert container_left(workload["id"]) == []
    finally:
        for pid in filter(alive, group):  # a failed test leaves nothing running either
            os.kill(pid, signal.SIGKILL)
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 15) == 0


async def test_the_config_file_sets_the_sandbox_mode(nats_server, nc, tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(f'name = "plain"\nserver = "{nats_server.url}"\nsandbox = "none"\n')
    process = await start_node("--config", str(path), "--state-dir", str(tmp_path / "s"))
    ping = await wait_for_node(nc, "plain")
    assert ping["tags"]["nex.unsafe"] == "true" and "nex.sandbox" not in ping["tags"]
    process.send_signal(signal.SIGTERM)
    output, _ = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0 and "UNSAFE" in output.decode()

    path.write_text('sandbox = "maybe"\n')
    process = await start_node("--config", str(path), "--state-dir", str(tmp_path / "s"))
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1 and "sandbox" in output.decode() and "Traceback" not in output.decode()


# -- failed starts, and what runsc logs ---------------------------------------------------------

@pytest.mark.parametrize("mode", ["oci", "gvisor"])
async def test_a_failed_start_says_why_and_leaves_no_cgroup_in_any_hierarchy(tmp_path, mode):
    """runsc's failed starts left the cgroup in every hierarchy (cpuset, devices, freezer, blkio and
    name=systemd too); the cleanup now looks in each."""
    from conftest import sandbox_verdict
    from nex.api.errors import InternalError
    from nex.api.models import Limits
    from nex.sandbox.bundle import ContainerSpec
    from nex.sandbox.idranges import host_ranges
    from nex.sandbox.runner import make_bundle_dir

    state = tmp_path / "state"
    state.mkdir(mode=0o711)
    tmp_path.chmod(0o711)
    reason = await sandbox_verdict(state, mode)
    if reason is not None:
        pytest.skip(f"this host cannot sandbox with {mode}: {reason}")
    runner, _ = await (OciRunner.probe_gvisor(state) if mode == "gvisor" else OciRunner.probe(state))
    ids = host_ranges().allocate(f"{runner.root} failed-start")
    try:
        bundle = make_bundle_dir(runner.bundles_dir / "failed", ids.base)
        (bundle / "rootfs").mkdir(mode=0o755)
        spec = ContainerSpec(id="nex-failed-start", rootfs=bundle / "rootfs", args=["/probe"],
                             limits=Limits(memory_mib=32, pids=8), id_base=ids.base)
        runner.write_bundle(spec, bundle)
        shutil.rmtree(bundle / "rootfs")  # both runtimes fail before the container's process exists
        with pytest.raises(InternalError) as caught:
            await runner.start(spec, bundle, lambda stream, line: None)
        assert "the sandbox did not start: " in str(caught.value)
        assert "exited with" not in str(caught.value), "the runtime's own reason, not only its exit status"
        assert not cgroups.exists(spec.cgroups_path), [d for d in cgroups.directories(spec.cgroups_path)
                                                       if d.exists()]
        assert await runner.list_containers() == []
    finally:
        shutil.rmtree(runner.bundles_dir, ignore_errors=True)
        host_ranges().release(ids.slot)


def test_runscs_log_of_objects_without_newlines_gives_the_cause_first(tmp_path):
    from nex.sandbox.runner import _runtime_error

    log = tmp_path / "runc.log"
    log.write_text('{"msg":"Error setting up root FS: operation not permitted","level":"error","time":"t"}'
                   '{"msg":"debug detail","level":"debug","time":"t"}'
                   '{"msg":"running container: cannot create sandbox: EOF","level":"error","time":"t"}')
    assert _runtime_error(log) == ("Error setting up root FS: operation not permitted "
                                   "(then: running container: cannot create sandbox: EOF)")
    log.write_text('{"level":"error","msg":"runc run failed: exec: \\"/x\\": not found","time":"t"}\n')
    assert _runtime_error(log) == 'runc run failed: exec: "/x": not found'


def test_gvisor_limits_leave_room_for_gvisors_own_tasks_and_memory():
    from nex.api.models import Limits, NetworkMode
    from nex.sandbox.bundle import ContainerSpec, config
    from nex.sandbox.gvisor import MEMORY_HEADROOM_MIB, GvisorSettings, host_limits

    host = host_limits(Limits(memory_mib=32, pids=20, cpus=0.5))
    assert host.memory_bytes == (32 + MEMORY_HEADROOM_MIB) << 20
    assert host.pids == PIDS_BASE + PIDS_PER_TASK * 20 and host.cpu_quota_us == 50_000
    assert host_limits(Limits()) == host_limits(Limits()).__class__(cpu_period_us=100_000)
    spec = ContainerSpec(id="nex-x", rootfs=Path("/r"), args=["/p"], limits=Limits(pids=20))
    under_runsc = config(spec, GvisorSettings.bundle_options())
    rlimits = {r["type"]: r["hard"] for r in under_runsc["process"]["rlimits"]}
    assert rlimits["RLIMIT_NPROC"] == 20, "the guest's own limit, enforced by gVisor's kernel"
    assert not [r for r in under_runsc["linux"]["seccomp"]["syscalls"] if r["names"] == ["clone3"]]
    assert {"type": "user"} in under_runsc["linux"]["namespaces"]
    host_network = config(spec, GvisorSettings.bundle_options(NetworkMode.HOST))["linux"]
    assert {"type": "user"} not in host_network["namespaces"] and "uidMappings" not in host_network
    under_runc = config(spec)
    assert "RLIMIT_NPROC" not in {r["type"] for r in under_runc["process"]["rlimits"]}
    assert [r for r in under_runc["linux"]["seccomp"]["syscalls"] if r["names"] == ["clone3"]]
