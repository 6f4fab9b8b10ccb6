"""Hundreds of functions on one node: all answer, the control API still works, nothing leaks.

bench/function_scale.py measures 1,000 (deploy time, memory, latency); this test
deploys a few hundred in one agent and fails when a per-function cost regresses
badly: a thread leaked per function, a stats reading of the node that wakes every
function's thread, an INFO or WPING that no longer answers, memory per function an
order of magnitude above today's.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from helpers import control, eventually, file_artifact

COUNT = 300
IN_FLIGHT = 16
SPARE_THREADS = 16  # the agent's own: main thread, executors, host services
MAX_RSS_PER_FUNCTION = 1024 * 1024  # about 210 KiB today (a QuickJS runtime and context each)


def agent_pids() -> list[int]:
    """The JavaScript agents started by this test process (the node runs in it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if parent == os.getpid() and b"nex.agent.js" in cmdline:
            found.append(int(entry.name))
    return found


def status_field(pid: int, field: str, status: Path | None = None) -> int:
    """A number of /proc/PID/status (or of the ``status`` file given)."""
    status = status or Path(f"/proc/{pid}/status")
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in {status}")


def thread_switches(pid: int) -> dict[int, int]:
    """Context switches of each thread of ``pid``: a thread that woke up has more."""
    switches = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            switches[int(task.name)] = status_field(pid, "voluntary_ctxt_switches", task / "status")
        except OSError:
            continue  # ended meanwhile
    return switches


async def invocations(nc, node_id: str, check) -> bool:
    """``check`` of {workload id: invocations} from an INFO of the node."""
    code, info = await control(nc, "INFO", node_id, timeout=10)
    return code is None and check({w["id"]: w.get("invocations") or 0 for w in info["workloads"]})


async def deploy_all(nc, node_id: str, script: Path, indices: range) -> list[str]:
    """Function i subscribed to scale.<i>, with at most IN_FLIGHT deploys outstanding; their ids."""
    slots = asyncio.Semaphore(IN_FLIGHT)
    artifact = file_artifact(script)

    async def one(i: int) -> str:
        async with slots:
            code, reply = await control(nc, "DEPLOY", node_id, {
                "name": f"f{i}", "type": "javascript", "artifact": artifact,
                "triggers": [{"subject": f"scale.{i}"}]}, timeout=30)
            assert code is None, reply
            return reply["id"]
    return list(await asyncio.gather(*(one(i) for i in indices)))


async def answers(nc, count: int) -> list[bytes]:
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int) -> bytes:
        async with slots:
            return (await nc.request(f"scale.{i}", b"", timeout=10)).data
    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def test_hundreds_of_functions_answer_and_the_node_still_reports(node, nc, tmp_path: Path):
    script = tmp_path / "hello.js"
    script.write_text("(subject, payload) => 'hello ' + subject\n")

    first = await deploy_all(nc, node.node_id, script, range(1))
    [agent] = agent_pids()
    threads_with_one = status_field(agent, "Threads")
    rss_with_one = status_field(agent, "VmRSS") * 1024

    ids = first + await deploy_all(nc, node.node_id, script, range(1, COUNT))

    assert await answers(nc, COUNT) == [f"hello scale.{i}".encode() for i in range(COUNT)]
    assert agent_pids() == [agent], "every function runs in the one agent"
    threads = status_field(agent, "Threads")
    assert threads <= COUNT + SPARE_THREADS, f"{threads} threads for {COUNT} functions"
    per_function = (status_field(agent, "VmRSS") * 1024 - rss_with_one) / (COUNT - 1)
    assert per_function < MAX_RSS_PER_FUNCTION, f"{per_function / 1024:.0f} KiB per function"

    code, info = await control(nc, "INFO", node.node_id, timeout=10)
    assert code is None
    assert len(info["workloads"]) == COUNT
    assert {w["state"] for w in info["workloads"]} == {"running"}

    # The node asks the agent for every function's counters (registry writes, INFO): that
    # must not wake the thread of each idle function. Once a reading has every first call,
    # one more call of one function, and a reading that has it, wake a handful of threads.
    await eventually(lambda: invocations(nc, node.node_id, lambda counts: all(n == 1 for n in counts.values())),
                     timeout=15, interval=0.3)
    before = thread_switches(agent)
    assert (await nc.request("scale.0", b"", timeout=5)).data == b"hello scale.0"
    await eventually(lambda: invocations(nc, node.node_id, lambda counts: counts[ids[0]] == 2),
                     timeout=15, interval=0.3)
    after = thread_switches(agent)
    woken = [tid for tid, switches in after.items() if switches != before.get(tid)]
    assert len(woken) <= SPARE_THREADS, f"a stats reading woke {len(woken)} of {len(after)} threads"
    code, ping = await control(nc, "WPING", timeout=10)
    assert code is None and len(ping["workloads"]) == COUNT
    code, one = await control(nc, "WPING", ids[-1], timeout=10)
    assert code is None and [w["id"] for w in one["workloads"]] == [ids[-1]]

    # Undeployed, their threads end: none is left behind per function.
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def undeploy(workload_id: str) -> None:
        async with slots:
            code, reply = await control(nc, "UNDEPLOY", workload_id, {"grace_ms": 500}, timeout=30)
            assert code is None, reply
    await asyncio.gather(*(undeploy(w) for w in ids[1:]))
    await eventually(lambda: status_field(agent, "Threads") <= threads_with_one + 2, timeout=15)
    assert (await nc.request("scale.0", b"", timeout=5)).data == b"hello scale.0"
    code, info = await control(nc, "INFO", node.node_id, timeout=10)
    assert [w["id"] for w in info["workloads"] if w["state"] == "running"] == ids[:1]

