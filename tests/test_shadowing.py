"""Deploying over yourself is explicit: a second copy of a name, or a trigger that overlaps
another function's, is said at deploy, naming the other; --replace stops the older copies."""

from __future__ import annotations

from helpers import eventually, nex, running_node
from nex.client import NexClient
from nex.connection import ConnectOptions


async def live(nats_server, name: str) -> list[str]:
    async with await NexClient.connect(ConnectOptions(servers=[nats_server.url])) as client:
        return sorted(w.id for w in await client.workloads(expected_nodes=1)
                      if w.name == name and w.state.value == "running")


def deployed_id(out: str) -> str:
    return next(line.split()[1] for line in out.splitlines() if line.startswith("ID"))


async def test_a_second_copy_of_a_name_is_said_and_replace_stops_the_old_ones(nats_server, tmp_path):
    source = tmp_path / "hello.js"
    source.write_text("(subject, payload) => 'v1'")
    server = ["--server", nats_server.url]
    async with running_node(nats_server, tmp_path / "node", "solo", reconciler=False):
        code, out, err = await nex("devrun", str(source), "--trigger", "shadow.hello", *server)
        assert code == 0, err
        first = deployed_id(out)
        assert "note" not in err, "nothing else ran: nothing to say"

        code, out, err = await nex("devrun", str(source), "--trigger", "shadow.hello", *server)
        assert code == 0, err
        second = deployed_id(out)
        assert f"nex: note: a workload named 'hello' already runs in namespace 'default' ({first} on node" in err
        assert "--replace stops the old copies" in err
        assert await live(nats_server, "hello") == sorted([first, second]), "said, and left running: both"

        source.write_text("(subject, payload) => 'v2'")
        code, out, err = await nex("devrun", str(source), "--trigger", "shadow.hello", "--replace", *server)
        assert code == 0, err
        third = deployed_id(out)
        assert f"nex: stopped the old copy {first}" in err and f"nex: stopped the old copy {second}" in err
        assert "note" not in err, "the copies it replaced are not announced as shadows"
        assert await eventually(lambda: _only(nats_server, "hello", third), timeout=10)

        code, out, err = await nex("invoke", "shadow.hello", *server)
        assert code == 0 and out.strip() == "v2", (out, err)


async def _only(nats_server, name: str, workload_id: str) -> bool:
    return await live(nats_server, name) == [workload_id]


async def test_a_trigger_that_overlaps_another_functions_is_said_naming_it(nats_server, tmp_path):
    upper, catch_all = tmp_path / "upper.js", tmp_path / "everything.js"
    upper.write_text("(subject, payload) => 'upper'")
    catch_all.write_text("(subject, payload) => 'everything'")
    server = ["--server", nats_server.url]
    async with running_node(nats_server, tmp_path / "node", "solo", reconciler=False):
        code, out, err = await nex("devrun", str(upper), "--trigger", "demo.upper", *server)
        assert code == 0, err
        upper_id = deployed_id(out)

        code, out, err = await nex("devrun", str(catch_all), "--trigger", "demo.>", *server)
        assert code == 0, err
        assert (f"nex: note: trigger 'demo.>' overlaps 'demo.upper' of javascript 'upper' ({upper_id} on node"
                in err), err

        code, out, err = await nex("devrun", str(upper), "--name", "lower", "--trigger", "demo.lower", *server)
        assert code == 0, err
        assert "overlaps 'demo.>' of javascript 'everything'" in err
        assert "'upper'" not in err, "demo.lower and demo.upper do not overlap"
