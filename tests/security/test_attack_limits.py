"""Attacks on the limits of functions (issue 13, item 9), against a real node on a real nats-server.

The attacker is a plain nats-py client without a key: it deploys (the node trusts no
issuer here) and publishes. Each attack ran unbounded before: a Wasm table grown past
``memory_mib``, a function that triggers itself forever, a JavaScript string result
that could not be read back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import wasmtime
from nats.aio.client import Client

from helpers import build_wasm, collect, control, deploy, eventually, function_error, request
from nex.api import subjects
from nex.api.hops import HOP_HEADER, MAX_HOPS
from nex.client import NexClient
from nex.node.node import Node

MIB = 1024 * 1024
WASM_SOURCES = Path(__file__).parent.parent / "wasm"

# With a payload it answers "ok". Without one it grows its table by 2**20 elements 32 times
# (256 MiB at 8 bytes an element), and traps when a grow is refused, as a program whose
# allocation fails aborts.
TABLE_GROW_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (table $t 0 funcref)
  (data (i32.const 64) "ok")
  (func (export "_start") (local $n i32)
    (i32.store (i32.const 0) (i32.const 128))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (if (i32.load (i32.const 8))
      (then
        (i32.store (i32.const 16) (i32.const 64))
        (i32.store (i32.const 20) (i32.const 2))
        (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
        (return)))
    (loop $grow
      (if (i32.eq (table.grow $t (ref.null func) (i32.const 1048576)) (i32.const -1)) (then unreachable))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br_if $grow (i32.lt_u (local.get $n) (i32.const 32))))))
"""

# What a componentize-py component needs of tables: two, of over 5,600 elements.
TWO_TABLES_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (table 6000 funcref)
  (table 6000 funcref)
  (data (i32.const 64) "two tables")
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 64))
    (i32.store (i32.const 20) (i32.const 10))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))
"""

SELF_TRIGGER_JS = """
async (subject, payload) => {
  await nex.publish(env.NEXT, payload);
  return "again";
}
"""

# The same, trying to reset the count with a header of its own.
FORGING_JS = """
async (subject, payload) => {
  await nex.publish(subject, payload, { headers: { "Nex-Hop": "0", "nex-hop": "0", "NEX-HOP": "-1" } });
  return "again";
}
"""


@pytest.fixture(scope="module")
def hostcalls_wasm(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """tests/wasm/hostcalls.c: "pub SUBJECT DATA" publishes DATA on SUBJECT from Wasm."""
    return build_wasm(WASM_SOURCES / "hostcalls.c", tmp_path_factory.mktemp("limits") / "hostcalls.wasm").read_bytes()


async def deploy_code(nc: Client, node: Node, tmp_path: Path, name: str, kind: str, code: bytes, subject: str,
                      **body: object) -> dict:
    """Deploy ``code`` as function ``name`` through the Object Store, as any client can."""
    path = tmp_path / f"{name}.{'wasm' if kind == 'wasm' else 'js'}"
    path.write_bytes(code)
    artifact = await NexClient(nc).upload_artifact(path, key=name)
    return await deploy(nc, node, {"name": name, "type": kind, "artifact": artifact.model_dump(),
                                   "triggers": [{"subject": subject}], **body}, timeout=5.0)


def agent_peak_rss(engine_module: str) -> int:
    """VmHWM, in bytes, of the one agent process of this test that runs ``engine_module``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if engine_module.encode() in cmdline and int(fields["PPid"]) == os.getpid():
            found.append(int(fields["VmHWM"].split()[0]) * 1024)
    assert len(found) == 1, f"expected one {engine_module} agent of this test, found {len(found)}"
    return found[0]


async def test_table_grow_fails_the_call_and_keeps_the_agent_within_memory_mib(
        node: Node, nc: Client, tmp_path: Path):
    await deploy_code(nc, node, tmp_path, "grower", "wasm", wasmtime.wat2wasm(TABLE_GROW_WAT), "attack.grow",
                      limits={"memory_mib": 16})
    assert (await request(nc, "attack.grow", b"warm up")).data == b"ok"
    before = agent_peak_rss("nex.agent.wasm")

    reply = await request(nc, "attack.grow", timeout=30)

    grown = agent_peak_rss("nex.agent.wasm") - before
    print(f"wasm agent peak RSS: {before / MIB:.1f} MiB before the table.grow attack, +{grown / MIB:.1f} MiB")
    assert grown < 32 * MIB  # 256 MiB without a table limit
    assert "unreachable" in function_error(reply).message
    assert (await request(nc, "attack.grow", b"again")).data == b"ok"


async def test_two_tables_of_6000_elements_run_under_16_mib(node: Node, nc: Client, tmp_path: Path):
    await deploy_code(nc, node, tmp_path, "tables", "wasm", wasmtime.wat2wasm(TWO_TABLES_WAT), "room.tables",
                      limits={"memory_mib": 16})
    assert (await request(nc, "room.tables")).data == b"two tables"


async def _events(nc: Client, kind: str) -> list:
    return await collect(nc, subjects.events("default", kind))


async def _function_stats(nc: Client, node: Node, workload_id: str) -> dict:
    code, info = await control(nc, "INFO", node.node_id)
    assert code is None, info
    return next(w for w in info["workloads"] if w["id"] == workload_id)


async def test_a_function_that_triggers_itself_stops_at_the_hop_limit(node: Node, nc: Client, tmp_path: Path):
    summary = await deploy_code(nc, node, tmp_path, "looper", "javascript", SELF_TRIGGER_JS.encode(), "loop.x",
                                env={"NEXT": "loop.x"})
    invoked, loops, seen = await _events(nc, "function_invoked"), await _events(nc, "invocation_loop"), \
        await collect(nc, "loop.x")
    await nc.flush()

    await nc.publish("loop.x", b"round")

    await eventually(lambda: loops, timeout=15)
    await eventually(lambda: len(invoked) == MAX_HOPS + 1 and len(seen) == MAX_HOPS + 2)
    event = json.loads(loops[0].data)
    assert event["data"]["name"] == "looper" and event["data"]["namespace"] == "default"
    assert event["data"]["subject"] == "loop.x" and event["data"]["hop"] == MAX_HOPS + 1
    assert "round" not in loops[0].data.decode()  # no payload in the event
    assert [msg.headers.get(HOP_HEADER) if msg.headers else None for msg in seen] == \
        [None, *(str(hop) for hop in range(1, MAX_HOPS + 2))]
    await eventually(lambda: _errors_are(nc, node, summary["id"], 1))
    # The agent still serves: a request starts a chain of its own, which stops the same way.
    assert (await request(nc, "loop.x", b"ask")).data == b"again"
    await eventually(lambda: len(loops) == 2 and len(invoked) == 2 * (MAX_HOPS + 1), timeout=15)


async def _errors_are(nc: Client, node: Node, workload_id: str, errors: int) -> bool:
    return (await _function_stats(nc, node, workload_id)).get("errors") == errors


async def test_two_functions_that_trigger_each_other_stop_at_the_hop_limit(node: Node, nc: Client, tmp_path: Path):
    await deploy_code(nc, node, tmp_path, "ping", "javascript", SELF_TRIGGER_JS.encode(), "nex.default.ping",
                      env={"NEXT": "nex.default.pong"})
    await deploy_code(nc, node, tmp_path, "pong", "javascript", SELF_TRIGGER_JS.encode(), "nex.default.pong",
                      env={"NEXT": "nex.default.ping"})
    invoked, loops = await _events(nc, "function_invoked"), await _events(nc, "invocation_loop")
    await nc.flush()

    await nc.publish("nex.default.ping", b"serve")

    await eventually(lambda: loops, timeout=15)
    await eventually(lambda: len(invoked) == MAX_HOPS + 1)
    names = [json.loads(msg.data)["data"]["name"] for msg in invoked]
    # ping ran at hops 0, 2, ... 16, pong at 1, 3, ... 15
    assert sorted(names) == ["ping"] * (MAX_HOPS // 2 + 1) + ["pong"] * (MAX_HOPS // 2)
    assert json.loads(loops[0].data)["data"]["name"] == "pong"  # ping's last run, at hop 16, sent hop 17


async def test_a_function_cannot_reset_its_hop_count(node: Node, nc: Client, tmp_path: Path):
    await deploy_code(nc, node, tmp_path, "forger", "javascript", FORGING_JS.encode(), "nex.default.forge")
    invoked, loops, seen = await _events(nc, "function_invoked"), await _events(nc, "invocation_loop"), \
        await collect(nc, "nex.default.forge")
    await nc.flush()

    await nc.publish("nex.default.forge", b"round")

    await eventually(lambda: loops and len(invoked) == MAX_HOPS + 1, timeout=15)
    assert [{name.lower() for name in msg.headers} for msg in seen[1:]] == [{HOP_HEADER.lower()}] * (MAX_HOPS + 1)


async def test_a_chain_of_wasm_publishes_stops_at_the_hop_limit(node: Node, nc: Client, tmp_path: Path,
                                                                hostcalls_wasm: bytes):
    subject = "nex.default.wchain"
    await deploy_code(nc, node, tmp_path, "wchain", "wasm", hostcalls_wasm, subject)
    invoked, loops = await _events(nc, "function_invoked"), await _events(nc, "invocation_loop")
    await nc.flush()

    # Each call publishes the rest of its payload: a chain of 21 calls without a limit.
    await nc.publish(subject, f"pub {subject} ".encode() * 20 + b"end")

    await eventually(lambda: loops and len(invoked) == MAX_HOPS + 1, timeout=15)
    assert json.loads(loops[0].data)["data"]["hop"] == MAX_HOPS + 1


async def test_a_message_past_the_hop_limit_gets_an_error_reply(node: Node, nc: Client, tmp_path: Path):
    await deploy_code(nc, node, tmp_path, "echo", "javascript", b"(subject, payload) => payload", "hop.echo")

    refused = function_error(await nc.request("hop.echo", b"x", headers={HOP_HEADER: str(MAX_HOPS + 1)}, timeout=5))
    served = await nc.request("hop.echo", b"x", headers={HOP_HEADER: str(MAX_HOPS)}, timeout=5)

    assert refused.kind == "loop" and HOP_HEADER in refused.message
    assert served.data == b"x"


@pytest.mark.parametrize("script, size", [
    ("() => 'x'.repeat(1 << 20)", MIB),
    ("() => { let s = ''; for (let i = 0; i < (1 << 17); i++) s += 'abcdefgh'; return s; }", MIB),
    ("() => { const o = {}; for (let i = 0; i < 40000; i++) o['key' + i] = 'v'.repeat(12); return JSON.stringify(o); }",
     None),
], ids=["repeat", "concatenated", "json"])
async def test_javascript_returns_a_mebibyte_string_whole(node: Node, nc: Client, tmp_path: Path,
                                                          script: str, size: int | None):
    await deploy_code(nc, node, tmp_path, "big", "javascript", script.encode(), "big.string")

    reply = await request(nc, "big.string", timeout=15)

    assert not reply.headers, reply.data[:200]
    if size is None:
        assert len(json.loads(reply.data)) == 40000 and len(reply.data) > 1000 * 1000
    else:
        assert len(reply.data) == size
        assert reply.data[:8] in (b"x" * 8, b"abcdefgh")


async def test_a_result_over_max_payload_is_a_clear_error(node: Node, nc: Client, tmp_path: Path):
    await deploy_code(nc, node, tmp_path, "huge", "javascript", b"() => 'y'.repeat(3 << 20)", "big.huge",
                      limits={"memory_mib": 64})

    error = function_error(await request(nc, "big.huge", timeout=15))

    assert "max_payload" in error.message


async def test_a_function_that_invokes_itself_async_stops_at_the_hop_limit(node: Node, nc: Client, tmp_path: Path):
    subject = "nex.default.chain"
    await deploy_code(nc, node, tmp_path, "chain", "javascript", SELF_TRIGGER_JS.encode(), subject,
                      env={"NEXT": subject}, triggers=[{"subject": subject, "mode": "async"}])
    invoked, loops, dead = (await _events(nc, "function_invoked"), await _events(nc, "invocation_loop"),
                            await _events(nc, "function_dead_lettered"))
    await nc.flush()

    await nc.jetstream().publish(subject, b"start")

    await eventually(lambda: loops and dead, timeout=30)
    assert len(invoked) == MAX_HOPS + 1
    # Dead-lettered at once: a refused loop is not tried again (5 attempts by default).
    assert len(loops) == 1 and json.loads(dead[0].data)["data"]["attempts"] == 1
    assert json.loads(dead[0].data)["data"]["error"].startswith("invocation loop")
