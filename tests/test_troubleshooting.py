"""docs/troubleshooting.md, message by message: what a user sees (stderr, exit status, and how soon
where nothing answers) against real nats-servers, nodes, ports and `nex` processes."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import nats.errors
import pytest
from aiohttp import web
from croniter import croniter

from nex.api import subjects
from nex.api.errors import START_NODE_HINT, NatsRefused, NatsUnavailable, UnknownWorkload
from nex.api.models import Trigger
from nex.cli.creds import make_namespace_buckets
from nex.cli.node_up import NODE_SERVER_HINT
from nex.cli.options import unknown_command
from nex.client import NexClient
from nex.connection import BadServerUrl, ConnectOptions, check_server, check_server_url
from nex.natsserver import NatsServer, free_port, port_in_use

from helpers import control, eventually, file_artifact, nex, running_node

FAST_S = 2.0  # where nothing answers, the error comes within this (the command's own start included)
JOBS = Path(__file__).parent / "functions" / "jobs.js"


async def timed_nex(*args: str) -> tuple[int, str, list[str], float]:
    """`nex ARGS` as a process: (exit status, stdout, the lines of stderr, seconds it took)."""
    started = time.monotonic()
    code, out, err = await nex(*args, timeout=30)
    return code, out, err.splitlines(), time.monotonic() - started


async def listen_silently() -> tuple[int, object]:
    """A TCP port that accepts connections and never says a word, and how to close it."""
    held: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda reader, writer: held.append(writer), "127.0.0.1", 0)

    async def close() -> None:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    return server.sockets[0].getsockname()[1], close


async def serve_http() -> tuple[int, object]:
    """A real HTTP server, as nats-server's monitoring port is one, and how to close it."""
    runner = web.AppRunner(web.Application())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner.addresses[0][1], runner.cleanup


@pytest.fixture
async def silent_port():
    port, close = await listen_silently()
    yield port
    await close()


@pytest.fixture(params=[listen_silently, serve_http], ids=["silent", "http"])
async def not_nats_port(request):
    """A port where something else than NATS listens."""
    port, close = await request.param()
    yield port
    await close()


# -- nex logs of a workload nobody knows -------------------------------------------------------


async def test_logs_of_an_unknown_workload_say_so_with_or_without_follow(nats_server, tmp_path):
    async with running_node(nats_server, tmp_path / "node", "logs-node"):
        for follow in ([], ["-f"]):  # -f waited for ever
            code, out, err, _ = await timed_nex("logs", "nosuchworkload", *follow, "-s", nats_server.url)
            assert (code, out) == (1, "")
            assert err == ["nex: error: no workload 'nosuchworkload' in namespace 'default': no node runs it, "
                           "and the logs stream keeps none of its lines", UnknownWorkload.hint]
        code, _, err, _ = await timed_nex("logs", "nosuchworkload", "-n", "shop", "-s", nats_server.url)
        assert code == 1 and "in namespace 'shop'" in err[0]


async def test_logs_of_a_workload_that_ended_are_still_shown(nats_server, tmp_path, programs):
    async with running_node(nats_server, tmp_path / "node", "logs-node") as node:
        code, workload = await control(node.nc, "DEPLOY", node.node_id, {
            "name": "job", "type": "native", "lifecycle": "job", "argv": ["0", "x"],
            "artifact": file_artifact(programs["job"])})
        assert code is None, workload

        async def logged() -> bool:
            code, out, _ = await nex("logs", workload["id"], "-s", nats_server.url)
            return code == 0 and out == "job arg 0\njob arg x\n"
        await eventually(logged, timeout=15, interval=0.3)
    # No node runs it, or remembers it, any more: its lines are in the stream still.
    code, out, err, _ = await timed_nex("logs", workload["id"], "-s", nats_server.url)
    assert (code, out, err) == (0, "job arg 0\njob arg x\n", [])


# -- a --server where nothing answers as NATS ------------------------------------------------


async def test_a_port_that_is_not_nats_fails_at_once(not_nats_port):
    url = f"nats://127.0.0.1:{not_nats_port}"
    code, out, err, took = await timed_nex("node", "ls", "-s", url)
    assert (code, out) == (1, "")
    assert err[0].startswith(f"nex: error: cannot connect to NATS at {url}: nothing there answers as NATS: "
                             "it accepts connections but sent nothing within")
    assert err[1:] == [START_NODE_HINT]
    assert took < FAST_S  # it took 16.5 s, three tries of 5 s, to say TimeoutError


async def test_a_refused_connection_fails_at_once():
    port = free_port()  # nothing listens on it
    code, out, err, took = await timed_nex("workload", "ls", "-s", f"nats://127.0.0.1:{port}")
    assert (code, out) == (1, "")
    assert err == [f"nex: error: cannot connect to NATS at nats://127.0.0.1:{port}: connection refused: "
                   f"nothing listens on port {port} of 127.0.0.1", START_NODE_HINT]
    assert took < FAST_S
    assert "nex node up" in START_NODE_HINT and "make run" in START_NODE_HINT


async def test_the_client_reports_what_it_found(silent_port, nats_server):
    started = time.monotonic()
    with pytest.raises(NatsUnavailable) as caught:
        await NexClient.connect(ConnectOptions(servers=[f"nats://127.0.0.1:{silent_port}"]))
    assert time.monotonic() - started < 1.0
    assert caught.value.problem.startswith("nothing there answers as NATS")
    assert caught.value.hint == START_NODE_HINT and caught.value.code == 503
    assert (await check_server(nats_server.url, 1.0)).problem is None  # a NATS server greets


async def test_an_unknown_host():
    code, _, err, _ = await timed_nex("node", "ls", "-s", "nats://nats.invalid:4222")
    assert code == 1
    assert err == ["nex: error: cannot connect to NATS at nats://nats.invalid:4222: unknown host 'nats.invalid'",
                   START_NODE_HINT]


async def test_refused_credentials_say_so_and_not_to_start_a_node(tmp_path):
    config = tmp_path / "server.conf"
    config.write_text("authorization { users = [ {user: alice, password: s3cret} ] }\n")
    server = NatsServer(store_dir=tmp_path / "js", port=0, jetstream=False, extra_args=["-c", str(config)])
    await server.start()
    try:
        code, _, err, _ = await timed_nex("node", "ls", "-s", server.url, "--user", "alice", "--password", "nope")
    finally:
        await server.stop()
    assert code == 1
    assert err == [f"nex: error: cannot connect to NATS at {server.url}: nats: 'Authorization Violation'",
                   NatsRefused.hint]


async def test_nex_creds_no_longer_waits_for_ever_on_a_refused_connection():
    # It connected with max_reconnect_attempts=0, which nats-py takes as "try for ever".
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(NatsUnavailable) as caught:
        await asyncio.wait_for(make_namespace_buckets(ConnectOptions(servers=[url]), "shop", 1.0), FAST_S)
    assert caught.value.problem.startswith("connection refused")


async def test_node_up_on_a_server_that_is_not_nats(silent_port, tmp_path):
    url = f"nats://127.0.0.1:{silent_port}"
    code, _, err, took = await timed_nex("node", "up", "-s", url, "--state-dir", str(tmp_path / "n"), "--sandbox", "none")
    assert code == 1
    assert err[-2].startswith(f"nex: error: cannot connect to NATS at {url}: nothing there answers as NATS")
    assert err[-1] == NODE_SERVER_HINT
    assert took < 5  # three tries of 2 s, and the waits between them, before


async def test_a_lost_connection_suggests_starting_a_node(nats_server, tmp_path):
    async with running_node(nats_server, tmp_path / "node", "events-node") as node:
        follower = asyncio.create_task(nex("events", "-f", "-s", nats_server.url, timeout=30))

        async def following() -> bool:  # its live subscription: a request there finds a responder that never answers
            try:
                await node.nc.request(subjects.events("default", "probe"), b"", timeout=0.2)
            except nats.errors.NoRespondersError:
                return False
            except nats.errors.TimeoutError:
                return True
            return True
        await eventually(following, timeout=20, interval=0.1)
    await nats_server.stop()
    code, _, err = await follower
    assert code == 1
    assert err.splitlines()[-2:] == ["nex: error: the connection to NATS was closed", START_NODE_HINT]


# -- a URL of another scheme --------------------------------------------------------------------


async def test_an_http_url_is_corrected():
    code, out, err, took = await timed_nex("node", "ls", "-s", "http://127.0.0.1:8222")
    assert (code, out) == (1, "")
    assert err == ["nex: error: http://127.0.0.1:8222 is not a NATS URL: NATS URLs start with nats:// (or tls://, "
                   "ws://, wss://); use nats://127.0.0.1:4222 (8222 is nats-server's HTTP monitoring port, for "
                   "browsers; NATS clients connect to its client port, 4222 unless configured otherwise)"]
    assert took < FAST_S


@pytest.mark.parametrize("url, corrected", [
    ("http://nats.example:8222/varz", "nats://nats.example:4222"),
    ("https://nats.example", "tls://nats.example"),
    ("http://me:secret@10.0.0.5:4222", "nats://me:secret@10.0.0.5:4222"),
    ("HTTP://[::1]:8222", "nats://[::1]:4222"),
])
def test_the_corrected_url(url, corrected):
    with pytest.raises(BadServerUrl) as caught:
        check_server_url(url)
    assert caught.value.corrected == corrected


@pytest.mark.parametrize("url", ["nats://h:4222", "tls://h", "ws://h:8080", "wss://h", "h:4222", "h"])
def test_nats_urls_pass(url):
    assert check_server_url(url) == url


# -- a port taken for the embedded nats-server --------------------------------------------------


async def test_a_taken_port_says_which_port_to_take(nats_server, tmp_path):
    taken = nats_server.port
    code, _, err, took = await timed_nex("node", "up", "--port", str(taken), "--state-dir", str(tmp_path / "n"),
                                         "--sandbox", "none")
    assert code == 1
    assert err[-2] == f"nex: error: port {taken} of 127.0.0.1 is in use (by another node or server)"
    free = int(re.fullmatch(r"Start the node on a free port: nex node up --port (\d+) .*", err[-1]).group(1))
    assert err[-1] == (f"Start the node on a free port: nex node up --port {free} (or make run ARGS=\"--port {free}\"); "
                       f"commands then connect to it with --server nats://127.0.0.1:{free}.")
    assert free != taken and not port_in_use("127.0.0.1", free)
    assert took < FAST_S  # said before the sandbox probe and the rest, not by nats-server after them
    assert "[FTL]" not in "\n".join(err)


def test_the_readme_shows_make_run_with_arguments():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert 'make run ARGS="--port 4223"' in readme.split("## Five minutes with Nex")[1].split("## A fleet")[0]


# -- a command typed wrong -------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["nod", "ls"], "No such command 'nod'. Did you mean 'node'?"),
    (["node", "lss"], "No such command 'lss'. Did you mean 'ls'?"),
    (["workload", "sotp", "x"], "No such command 'sotp'. Did you mean 'stop'?"),
    (["wor", "ls"], "No such command 'wor'. Did you mean 'workload'?"),
    (["zzz"], "No such command 'zzz'."),
])
async def test_a_mistyped_command_gets_suggestions(args, message):
    code, out, err, _ = await timed_nex(*args)
    assert (code, out) == (2, "")
    assert err[-1] == f"Error: {message}"


def test_several_suggestions():
    assert unknown_command("lo", ["logs", "lameduck", "ls"]) == "No such command 'lo'. Did you mean 'logs'?"
    assert unknown_command("l", ["logs", "ls", "lameduck", "info"]) == (
        "No such command 'l'. Did you mean one of 'logs', 'ls', 'lameduck'?")


# -- a bad cron expression -------------------------------------------------------------------------


async def test_a_bad_schedule_says_what_is_wrong_with_an_example():
    code, out, err, _ = await timed_nex("devrun", str(JOBS), "--schedule", "reports=* * *", "-s", "nats://127.0.0.1:1")
    assert (code, out) == (2, "")
    assert err[-1] == ("Error: Invalid value for '--schedule': invalid schedule '* * *': it has 3 fields, where a cron "
                       "expression has 5 (minute hour day-of-month month day-of-week, in UTC), or 6 with seconds last; "
                       "e.g. '*/5 * * * *' (every 5 minutes), '0 6 * * mon-fri' (06:00 UTC on weekdays) or @daily")


@pytest.mark.parametrize("expression, problem", [
    ("daily", "it has 1 field, where a cron expression has 5"),
    ("", "it is empty"),
    ("61 * * * *", "the minute field, '61', is not valid: it takes 0-59"),
    ("0 24 * * *", "the hour field, '24', is not valid: it takes 0-23"),
    ("0 0 32 * *", "the day of the month field, '32', is not valid: it takes 1-31"),
    ("0 0 * 13 *", "the month field, '13', is not valid: it takes 1-12 or jan-dec"),
    ("0 0 * * funday", "the day of the week field, 'funday', is not valid"),
    ("* * * * * 61", "the second field, '61', is not valid"),
    ("0 0 30 2 *", "no date ever matches it"),
    ("@reboot", "@reboot is not one of @yearly"),
])
def test_each_bad_schedule_names_its_problem(expression, problem):
    with pytest.raises(ValueError) as caught:
        Trigger(subject="reports", schedule=expression)
    message = str(caught.value)
    assert f"invalid schedule {expression!r}: {problem}" in message
    assert "e.g. '*/5 * * * *'" in message and "String should have" not in message


@pytest.mark.parametrize("expression", ["@hourly", "@daily", "@weekly", "@monthly", "@yearly", "*/5 * * * *"])
def test_the_schedules_the_examples_offer_are_taken(expression):
    assert Trigger(subject="reports", schedule=expression).mode == "async"
    assert croniter(expression).get_next(float) > 0  # what nex.agent.schedule computes the fire times with


# -- the page itself ---------------------------------------------------------------------------


def test_the_page_shows_every_hint_as_printed():
    page = (Path(__file__).parent.parent / "docs" / "troubleshooting.md").read_text()
    for hint in (START_NODE_HINT, NatsRefused.hint, NODE_SERVER_HINT, UnknownWorkload.hint):
        assert f"\n{hint}\n" in page, hint
