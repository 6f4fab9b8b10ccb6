"""Durable async invocation (docs/functions.md, "Triggers"): a real node, a real nats-server,
a real QuickJS function (tests/functions/jobs.js).

An async trigger's messages are kept in the function's stream and run at least once;
failures are retried with a growing backoff and dead-lettered after max_attempts;
an idempotency key runs once; `nex dlq ls` and `nex dlq replay` show and replay the
dead letters.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from helpers import collect, control, deploy, eventually, function_body
from nex.agent import protocol
from nex.agent.durable.runner import backoff_s, reply_allowed
from nex.agent.durable.streams import done_key
from nex.api import subjects
from nex.api.errors import NotFound, from_reply
from nex.api.models import Trigger
from nex.cli import cli
from nex.client import NexClient
from nex.connection import flush_subscriptions
from nex.node.node import Node

FUNCTIONS = Path(__file__).parent / "functions"
JOBS = FUNCTIONS / "jobs.js"
SUBJECT = "jobs.run"
RESULTS = "nex.default.results"


def jobs(name: str, triggers: list[dict], **extra: object) -> dict:
    """jobs.js as function ``name``, called by ``triggers``."""
    return function_body(JOBS, name, SUBJECT, triggers=triggers, **extra)


async def deployed(nc: Client, node: Node, name: str = "jobs", retry: dict | None = None,
                   subject: str = SUBJECT) -> dict:
    trigger: dict = {"subject": subject, "mode": "async"}
    if retry:
        trigger["retry"] = retry
    return await deploy(nc, node, jobs(name, [trigger], limits={"timeout_ms": 2000}))


def job(job_id: str, fail: int = 0) -> bytes:
    return json.dumps({"id": job_id, "fail": fail}).encode()


async def runs(nc: Client, job_id: str) -> int:
    """How many times jobs.js ran job ``job_id`` (its own counter in the KV bucket "runs")."""
    kv = await nc.jetstream().key_value("NEXKV_default_runs")
    return json.loads((await kv.get(job_id)).value)


async def nex(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    """The `nex` command in this process, on a thread (it runs its own event loop): exit code, stdout, stderr."""
    result = await asyncio.wait_for(asyncio.to_thread(CliRunner().invoke, cli, list(args)), timeout)
    return result.exit_code, result.stdout, result.stderr


# -- the pure parts --

def test_backoff_doubles_up_to_the_cap():
    retry = protocol.RetrySettings(max_attempts=10, backoff_ms=100, max_backoff_ms=700)
    assert [backoff_s(retry, attempt) for attempt in range(1, 6)] == [0.1, 0.2, 0.4, 0.7, 0.7]


def test_done_keys_take_any_key_text():
    assert done_key("shop", "orders", "order 42/ü") != done_key("shop", "orders", "order 42/u")
    assert done_key("a_b", "c", "k").startswith("a_b.c.")
    assert done_key("shop", "orders", "").endswith(".-")


def test_replies_stay_in_the_function_scope():
    assert reply_allowed("shop", ["orders.new"], "nex.shop.results")
    assert reply_allowed("shop", ["orders.new"], "orders.new")
    assert not reply_allowed("shop", ["orders.new"], "nex.other.results")
    assert not reply_allowed("shop", ["orders.new"], "$NEX.SVC.shop.control.PING")
    assert not reply_allowed("shop", ["orders.new"], "nex.shop.*")


def test_bad_schedules_and_async_wildcards_are_refused_by_the_model():
    with pytest.raises(ValueError) as bad_cron:
        Trigger(subject="ticks", schedule="61 * * * *")
    with pytest.raises(ValueError) as wildcard:
        Trigger(subject="jobs.*", mode="async")
    assert "invalid schedule '61 * * * *'" in str(bad_cron.value)
    assert "without wildcards" in str(wildcard.value)
    assert Trigger(subject="ticks", schedule="*/5 * * * *").mode == "async"
    assert Trigger(subject="ticks", schedule="* * * * * */2").mode == "async"  # seconds last


# -- on a node --

async def test_async_invocation_runs_and_replies(node: Node, nc: Client):
    await deployed(nc, node)
    results = await collect(nc, RESULTS)
    await flush_subscriptions(nc)
    client = NexClient(nc)
    receipt = await client.invoke_async(SUBJECT, job("a1"), key="order-a1", reply_to=RESULTS)
    assert (receipt.stream, receipt.key, receipt.duplicate) == (subjects.function_stream("default", "jobs"), "order-a1", False)

    await eventually(lambda: results, timeout=10)
    assert json.loads(results[0].data) == {"id": "a1", "runs": 1}
    # Any NATS client invokes with a plain JetStream publish; without a key the sequence is the key.
    ack = await nc.jetstream().publish(SUBJECT, job("a2"), headers={subjects.REPLY_TO_HEADER: RESULTS})
    await eventually(lambda: len(results) == 2, timeout=10)
    done = await nc.jetstream().key_value(subjects.DONE_BUCKET)
    assert (await done.get(done_key("default", "jobs", "order-a1"))).value
    assert (await done.get(done_key("default", "jobs", f"seq-{ack.seq}"))).value
    # Work-queue retention: a message acked is gone from the stream.
    info = await nc.jetstream().stream_info(subjects.function_stream("default", "jobs"))
    assert info.state.messages == 0


async def test_a_failing_invocation_is_retried_with_growing_waits_then_dead_lettered(node: Node, nc: Client):
    await deployed(nc, node, retry={"max_attempts": 4, "backoff_ms": 200, "max_backoff_ms": 5000})
    failures = await collect(nc, subjects.events("default", "function_failed"))
    dead = await collect(nc, subjects.events("default", "function_dead_lettered"))
    results = await collect(nc, RESULTS)
    await flush_subscriptions(nc)
    client = NexClient(nc)
    await client.invoke_async(SUBJECT, job("f1", fail=99), key="f1", reply_to=RESULTS)

    await eventually(lambda: dead, timeout=20)
    assert len(failures) == 4 and await runs(nc, "f1") == 4
    stamps = [datetime.fromisoformat(json.loads(m.data)["time"]) for m in failures]
    waits = [(later - earlier).total_seconds() for earlier, later in zip(stamps, stamps[1:])]
    assert waits[0] >= 0.18 and waits[1] >= 0.38 and waits[2] >= 0.78, waits  # 0.2 s, 0.4 s, 0.8 s
    assert waits[2] > waits[0], waits
    event = json.loads(dead[0].data)["data"]
    assert (event["key"], event["attempts"]) == ("f1", 4) and "run 4 fails on purpose" in event["error"]
    # The final error goes to the reply subject, as a Nex error reply.
    await eventually(lambda: results, timeout=5)
    error = from_reply(results[0].data, results[0].headers)
    assert error is not None and "run 4 fails on purpose" in error.message

    letters = await client.dlq_list("jobs")
    assert [(d.function, d.subject, d.key, d.attempts) for d in letters] == [("jobs", SUBJECT, "f1", 4)]
    assert "run 4 fails on purpose" in letters[0].error
    assert await client.dlq_list("other") == []
    info = await nc.jetstream().stream_info(subjects.function_stream("default", "jobs"))
    assert info.state.messages == 0  # out of the function's stream: not run again


async def test_dlq_ls_and_replay_after_the_fix_run_it_once(node: Node, nc: Client):
    await deployed(nc, node, retry={"max_attempts": 2, "backoff_ms": 50, "max_backoff_ms": 50})
    switches = await nc.jetstream().create_key_value(bucket="NEXKV_default_switches")
    await switches.put("broken", b"yes")
    results = await collect(nc, RESULTS)
    await flush_subscriptions(nc)
    server = node.config.server

    code, out, err = await nex("invoke", "--async", SUBJECT, job("r1").decode(), "--key", "r1",
                               "--reply-to", RESULTS, "--json", "-s", server)
    assert code == 0, err
    assert json.loads(out)["key"] == "r1" and json.loads(out)["stream"] == subjects.function_stream("default", "jobs")
    await eventually(lambda: results, timeout=15)  # the final error of the second attempt

    code, out, err = await nex("dlq", "ls", "--json", "-s", server)
    assert code == 0, err
    [letter] = json.loads(out)
    assert (letter["function"], letter["key"], letter["attempts"]) == ("jobs", "r1", 2)
    assert "switched to broken" in letter["error"]
    code, table, err = await nex("dlq", "ls", "-s", server)
    assert code == 0 and "SEQ" in table and "r1" in table and "switched to broken" in table

    await switches.delete("broken")  # the fix
    code, out, err = await nex("dlq", "replay", str(letter["seq"]), "-s", server)
    assert code == 0, err
    await eventually(lambda: len(results) == 2, timeout=15)
    assert json.loads(results[1].data) == {"id": "r1", "runs": 3}  # two failed runs, one good one
    code, out, err = await nex("dlq", "ls", "--json", "-s", server)
    assert json.loads(out) == []
    # Replaying what is gone is a clear error and changes nothing.
    code, out, err = await nex("dlq", "replay", str(letter["seq"]), "-s", server)
    assert code == 1 and f"no dead letter {letter['seq']}" in err
    code, out, err = await nex("dlq", "replay", "not-a-seq", "-s", server)
    assert code == 2 and "SEQ" in err
    assert await runs(nc, "r1") == 3


async def test_devrun_makes_async_and_scheduled_triggers(node: Node, nc: Client):
    server = node.config.server
    code, out, err = await nex("devrun", str(JOBS), "--async-trigger", SUBJECT, "--json", "-s", server)
    assert code == 0, err
    [trigger] = json.loads(out)["triggers"]
    assert (trigger["subject"], trigger["mode"]) == (SUBJECT, "async")
    results = await collect(nc, RESULTS)
    await flush_subscriptions(nc)
    code, out, err = await nex("invoke", "--async", SUBJECT, job("cli1").decode(), "--reply-to", RESULTS, "-s", server)
    assert code == 0, err
    await eventually(lambda: results, timeout=15)
    assert json.loads(results[0].data) == {"id": "cli1", "runs": 1}

    # A bad --schedule or --async-trigger is a usage error naming the option; nothing is deployed.
    before = len(node.supervisor.table.active())
    code, out, err = await nex("devrun", str(JOBS), "--schedule", "reports.daily", "-s", server)
    assert code == 2 and "'--schedule'" in err and "SUBJECT=CRON" in err
    code, out, err = await nex("devrun", str(JOBS), "--schedule", "reports.daily=every day", "-s", server)
    assert code == 2 and "invalid schedule 'every day'" in err
    code, out, err = await nex("devrun", str(JOBS), "--async-trigger", "jobs.*", "-s", server)
    assert code == 2 and "'--async-trigger'" in err and "without wildcards" in err
    assert len(node.supervisor.table.active()) == before


async def test_the_same_key_runs_once(node: Node, nc: Client):
    await deployed(nc, node)
    results = await collect(nc, RESULTS)
    await flush_subscriptions(nc)
    client = NexClient(nc)
    first = await client.invoke_async(SUBJECT, job("d1"), key="d1", reply_to=RESULTS)
    second = await client.invoke_async(SUBJECT, job("d1"), key="d1", reply_to=RESULTS)
    assert (first.duplicate, second.duplicate, second.seq) == (False, True, first.seq)  # JetStream dropped it
    await eventually(lambda: results, timeout=10)
    # Past JetStream's window (a new message id), the completion record still stops a second run.
    await nc.jetstream().publish(SUBJECT, job("d1"), headers={
        subjects.MSG_ID_HEADER: "another-id", subjects.KEY_HEADER: "d1", subjects.REPLY_TO_HEADER: RESULTS})
    await client.invoke_async(SUBJECT, job("d2"), key="d2", reply_to=RESULTS)  # runs after the one above
    await eventually(lambda: len(results) == 2, timeout=10)
    assert json.loads(results[1].data)["id"] == "d2"
    assert await runs(nc, "d1") == 1
    info = await nc.jetstream().stream_info(subjects.function_stream("default", "jobs"))
    assert info.state.messages == 0


async def test_bad_async_triggers_are_refused_and_change_nothing(node: Node, nc: Client):
    for trigger, expected in [
        ({"subject": "jobs.*", "mode": "async"}, "without wildcards"),
        ({"subject": "ticks", "schedule": "61 * * * *"}, "invalid schedule '61 * * * *'"),
        ({"subject": "ticks", "schedule": "every minute"}, "invalid schedule 'every minute'"),
        ({"subject": "ticks", "mode": "sync", "schedule": "* * * * *"}, "scheduled trigger is async"),
        ({"subject": "ticks", "retry": {"max_attempts": 3}}, "retry applies to async"),
    ]:
        code, body = await control(nc, "DEPLOY", node.node_id, jobs("bad", [trigger]), timeout=15)
        assert code == 400, body
        assert expected in body["error"]["message"]

    await deployed(nc, node, name="jobs")
    code, body = await control(nc, "DEPLOY", node.node_id, jobs("thief", [{"subject": SUBJECT, "mode": "async"}]),
                               timeout=15)
    assert code == 400, body
    assert f"overlaps the subjects of stream {subjects.function_stream('default', 'jobs')}" in body["error"]["message"]
    names = sorted(w.name for w in await NexClient(nc).workloads())
    assert names == ["jobs"]
    # The first function still runs its invocations.
    results = await collect(nc, RESULTS)
    await flush_subscriptions(nc)
    await NexClient(nc).invoke_async(SUBJECT, job("ok"), reply_to=RESULTS)
    await eventually(lambda: results, timeout=10)
    # Nobody captures a subject no async function has: a clear error, nothing kept.
    client = NexClient(nc)
    with pytest.raises(NotFound) as missing:
        await client.invoke_async("nobody.here", b"x")
    assert "no async function is triggered by 'nobody.here'" in str(missing.value)


async def test_a_message_whose_last_attempt_died_is_dead_lettered_without_running(node: Node, nc: Client):
    retry = {"max_attempts": 1, "backoff_ms": 50, "max_backoff_ms": 50}
    trigger = [{"subject": SUBJECT, "mode": "async", "retry": retry}]
    summary = await deploy(nc, node, jobs("jobs", trigger, limits={"timeout_ms": 500}))
    code, body = await control(nc, "UNDEPLOY", summary["id"], body={}, timeout=15)
    assert code is None, body
    # A copy that takes the message for its only attempt and dies before it answers: this
    # client, on the function's own durable consumer, which never acks.
    await NexClient(nc).invoke_async(SUBJECT, job("lost"), key="lost")
    stream = subjects.function_stream("default", "jobs")
    dying_copy = await nc.jetstream().pull_subscribe_bind(durable=stream, stream=stream)
    [taken] = await dying_copy.fetch(1, timeout=5)
    assert taken.metadata.num_delivered == 1
    await dying_copy.unsubscribe()

    dead = await collect(nc, subjects.events("default", "function_dead_lettered"))
    await flush_subscriptions(nc)
    await deploy(nc, node, jobs("jobs", trigger, limits={"timeout_ms": 500}))
    await eventually(lambda: dead, timeout=15)  # after the ack wait: delivered a second time
    event = json.loads(dead[0].data)["data"]
    assert (event["key"], event["attempts"]) == ("lost", 1) and "stopped before it answered" in event["error"]
    [letter] = await NexClient(nc).dlq_list("jobs")
    assert (letter.key, letter.attempts) == ("lost", 1)
    with pytest.raises(NotFoundError):
        await nc.jetstream().key_value("NEXKV_default_runs")  # jobs.js never ran: it never counted a run
