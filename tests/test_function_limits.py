"""The limits of functions: the hop count (nex.api.hops) and the node's setting of it, how a
Wasm function's memory limit is shared out (nex.agent.wasm.limits), the proposals left out.
The attacks they stop are tests/security/test_attack_limits.py."""

from __future__ import annotations

import json

import pytest
import wasmtime

from helpers import collect, control, eventually, running_node
from nex.agent import protocol
from nex.agent.engine import CompileError
from nex.agent.wasm.limits import MAX_TABLES, TABLE_ELEMENT_BYTES, StoreLimits
from nex.agent.wasm.wasmtime_engine import WasmEngine
from nex.api import subjects
from nex.api.hops import HOP_HEADER, MAX_HOPS, hop_of, loop_error, onward, past_limit
from nex.client import NexClient

MIB = 1024 * 1024


@pytest.mark.parametrize("headers, hop", [
    (None, 0), ({}, 0), ({"other": "3"}, 0), ({HOP_HEADER: "7"}, 7), ({HOP_HEADER: "0"}, 0),
    ({HOP_HEADER: "-1"}, 0), ({HOP_HEADER: "x"}, 0), ({HOP_HEADER: ""}, 0), ({HOP_HEADER: " 3"}, 0),
    ({HOP_HEADER: "\u0663"}, 0), ({HOP_HEADER: "9" * 400}, 0), ({HOP_HEADER: "999999999"}, 999_999_999),
])
def test_hop_of_reads_a_count_or_nothing(headers, hop):
    assert hop_of(headers) == hop


def test_onward_adds_one_over_any_spelling_the_function_gave():
    sent = onward({"nex-hop": "0", "NEX-HOP": "0", "traceparent": "t"}, 4)
    assert sent == {"traceparent": "t", HOP_HEADER: "5"}
    assert onward(None, 0) == {HOP_HEADER: "1"}


def test_the_limit_is_16_and_past_it_is_a_loop_error():
    assert MAX_HOPS == 16 and not past_limit(16) and past_limit(17)
    error = loop_error(17)
    assert error.kind == "loop" and "17" in error.message and "16" in error.message


@pytest.mark.parametrize("mib", [1, 2, 16, 64, 1024])
def test_linear_memory_plus_tables_stay_within_the_limit(mib: int):
    limits = StoreLimits.for_memory(mib * MIB)
    assert limits.memory_size + limits.tables * limits.table_elements * TABLE_ELEMENT_BYTES <= mib * MIB
    assert limits.table_bytes == mib * MIB // 16
    assert limits.memories == 1


def test_a_componentize_py_component_fits_under_16_mib():
    limits = StoreLimits.for_memory(16 * MIB)
    assert limits.instances >= 16 and limits.tables >= 2 and limits.table_elements > 5600
    assert limits.table_elements == 16384 and limits.memory_size == 15 * MIB and limits.tables == MAX_TABLES


@pytest.mark.parametrize("wat, feature", [
    ('(module (type $a (array (mut i8))) (func (export "_start") (drop (array.new_default $a (i32.const 1)))))', "gc"),
    ('(module (tag $e) (func (export "_start") (throw $e)))', "exceptions"),
], ids=["gc", "exceptions"])
def test_modules_whose_objects_would_live_beside_the_limit_do_not_load(tmp_path, wat: str, feature: str):
    module = tmp_path / "m.wasm"
    module.write_bytes(wasmtime.wat2wasm(wat))
    engine = WasmEngine(None, warm_instances=0)
    load = protocol.Load(workload_id="w", name="m", namespace="default", artifact_path=str(module), triggers=[],
                         timeout_ms=1000, memory_bytes=16 * MIB)
    try:
        with pytest.raises(CompileError) as refused:
            engine.build(load)
    finally:
        engine.close()
    assert "does not compile" in str(refused.value) and feature in str(refused.value)


async def test_an_operator_sets_the_hop_limit_of_a_node(nats_server, nc, tmp_path):
    async with running_node(nats_server, tmp_path / "node", "hops", max_hops=2, live_call_events=True) as node:
        source = b"async (subject, payload) => { await nex.publish(subject, payload); return 'again'; }"
        code, summary = await control(nc, "DEPLOY", node.node_id, body={
            "name": "looper", "type": "javascript", "artifact": await _uploaded(nc, tmp_path, source),
            "triggers": [{"subject": "nex.default.loop"}]})
        assert code is None, summary
        invoked = await collect(nc, subjects.events("default", "function_invoked"))
        loops = await collect(nc, subjects.events("default", "invocation_loop"))
        await nc.flush()

        await nc.publish("nex.default.loop", b"go")

        await eventually(lambda: loops and len(invoked) == 3)
        assert json.loads(loops[0].data)["data"]["limit"] == 2


async def _uploaded(nc, tmp_path, source: bytes) -> dict:
    path = tmp_path / "looper.js"
    path.write_bytes(source)
    return (await NexClient(nc).upload_artifact(path)).model_dump()
