"""The dashboard's HTTP and SSE API (nex.ui), without a browser: a real nats-server, a real
node, the dashboard in-process on a free loopback port, and aiohttp as the page would call it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from nex.api import subjects
from nex.client import NexClient
from nex.connection import ConnectOptions
from nex.ui import Dashboard
from nex.ui.rates import RateWindow
from nex.ui.server import ACTION_HEADER
from nex.ui.sse import Broadcaster, encode
from helpers import build_wasm, eventually

ACTION = {ACTION_HEADER: "1"}

GREETER_JS = """\
(subject, payload) => {
  const text = new TextDecoder().decode(payload);
  console.log("greeting " + text);
  if (text === "fail") throw new Error("asked to fail");
  return "hello " + text;
}
"""


@pytest.fixture
def greeter(tmp_path: Path) -> Path:
    path = tmp_path / "greeter.js"
    path.write_text(GREETER_JS)
    return path


@asynccontextmanager
async def dashboard_on(nats_url: str, *namespaces: str) -> AsyncIterator[tuple[str, Dashboard]]:
    primary = await NexClient.connect(ConnectOptions(servers=[nats_url]), namespace=namespaces[0]
                                      if namespaces else "default")
    clients = [primary] + [NexClient(primary.nc, ns) for ns in namespaces[1:]]
    dashboard = Dashboard(clients, refresh_s=0.5)
    url = await dashboard.start("127.0.0.1", 0)
    try:
        yield url.rstrip("/"), dashboard
    finally:
        await dashboard.stop()
        await asyncio.wait_for(primary.close(), 10)


@pytest.fixture
async def ui(nats_server, node):
    async with dashboard_on(nats_server.url) as (url, dashboard):
        async with aiohttp.ClientSession() as http:
            yield url, http, dashboard


async def fleet(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/api/fleet") as response:
        assert response.status == 200
        return await response.json()


async def deploy_form(http, url: str, path: Path, headers=ACTION, **fields: str) -> tuple[int, dict]:
    form = aiohttp.FormData()
    for key, value in fields.items():
        form.add_field(key, value)
    form.add_field("file", path.read_bytes(), filename=path.name)
    async with http.post(f"{url}/api/deploy", data=form, headers=headers) as response:
        return response.status, await response.json()


class SseReader:
    """Reads named SSE messages from an open response, each with a bounded wait."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, timeout: float = 10.0) -> tuple[str, Any]:
        async def read() -> tuple[str, Any]:
            event, data = "message", None
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\n")
                if line == "":
                    if data is not None:
                        return event, data
                    event = "message"
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
        return await asyncio.wait_for(read(), timeout)

    async def until(self, wanted: str, check=lambda data: True, timeout: float = 15.0) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event, data = await self.next(max(0.1, deadline - loop.time()))
            if event == wanted and check(data):
                return data


# -- the read side ----------------------------------------------------------------------


async def test_fleet_lists_the_node_with_tags_state_and_resources(ui, node):
    url, http, _ = ui
    snapshot = await fleet(http, url)
    [shown] = snapshot["nodes"]
    assert shown["node_id"] == node.node_id and shown["name"] == "test-node"
    assert shown["state"] == "running" and shown["tags"]["zone"] == "a"
    assert shown["resources"]["cpus"] >= 1 and shown["resources"]["memory_bytes"] > 0
    assert snapshot["workloads"] == [] and snapshot["namespaces"] == ["default"]


async def test_the_stream_opens_with_a_snapshot_and_then_carries_live_events(ui, nc, greeter):
    url, http, _ = ui
    async with http.get(f"{url}/api/stream") as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        stream = SseReader(response)
        opening = await stream.until("fleet")
        assert len(opening["nodes"]) == 1
        status, summary = await deploy_form(http, url, greeter, trigger="ui.greet")
        assert status == 201, summary
        started = await stream.until("event", lambda e: e["type"] == "workload_started")
        assert started["subject"] == summary["id"] and started["namespace"] == "default"
        listed = await stream.until("fleet", lambda f: any(w["id"] == summary["id"] for w in f["workloads"]))
        [workload] = listed["workloads"]
        assert (workload["name"], workload["type"], workload["state"]) == ("greeter", "javascript", "running")
        assert workload["node_name"] == "test-node"


async def test_rates_count_calls_and_failures_per_function(ui, nc, greeter):
    url, http, _ = ui
    status, summary = await deploy_form(http, url, greeter, trigger="ui.rate")
    assert status == 201, summary
    for text in ("a", "b", "c"):
        assert (await nc.request("ui.rate", text.encode(), timeout=5)).data == f"hello {text}".encode()
    await nc.request("ui.rate", b"fail", timeout=5)

    async def counted():
        rates = (await fleet(http, url))["rates"]
        return rates if rates and rates[0]["calls"] == 4 else None
    [rate] = await eventually(counted, timeout=10)
    assert rate["workload_id"] == summary["id"] and rate["name"] == "greeter"
    assert rate["errors"] == 1 and rate["error_ratio"] == 0.25


async def test_the_log_tail_streams_a_workloads_lines(ui, nc, greeter):
    url, http, _ = ui
    status, summary = await deploy_form(http, url, greeter, trigger="ui.logs")
    assert status == 201, summary
    await nc.request("ui.logs", b"first", timeout=5)
    async with http.get(f"{url}/api/logs/default/{summary['id']}") as response:
        stream = SseReader(response)
        line = await stream.until("line")
        assert (line["stream"], line["text"]) == ("stdout", "greeting first")
        await nc.request("ui.logs", b"second", timeout=5)  # a live line after the history
        line = await stream.until("line")
        assert line["text"] == "greeting second"


@pytest.fixture(scope="session")
def fn_wasm(tmp_path_factory) -> Path:
    """tests/wasm/fn.c built as a WASI command (as tests/test_wasm.py builds it)."""
    return build_wasm(Path(__file__).parent / "wasm" / "fn.c", tmp_path_factory.mktemp("ui-wasm") / "fn.wasm")


async def test_a_wasm_function_uploaded_through_the_form_runs(ui, nc, fn_wasm):
    url, http, _ = ui
    status, summary = await deploy_form(http, url, fn_wasm, trigger="ui.wasm", name="wasm-fn")
    assert status == 201, summary
    assert (summary["type"], summary["lifecycle"], summary["name"]) == ("wasm", "function", "wasm-fn")
    assert (await nc.request("ui.wasm", b"log", timeout=10)).data == b"logged"
    async with http.get(f"{url}/api/logs/default/{summary['id']}") as response:
        line = await SseReader(response).until("line")
    assert (line["stream"], line["text"]) == ("stderr", "first line")


async def test_stop_and_lameduck_act_on_the_fleet(ui, node, greeter):
    url, http, _ = ui
    status, summary = await deploy_form(http, url, greeter, trigger="ui.stop")
    assert status == 201, summary
    async with http.post(f"{url}/api/workloads/default/{summary['id']}/stop", headers=ACTION) as response:
        assert response.status == 200
        assert (await response.json())["id"] == summary["id"]
    [ended] = (await fleet(http, url))["workloads"]  # the node keeps ended workloads for a while
    assert (ended["id"], ended["state"]) == (summary["id"], "stopped")
    async with http.post(f"{url}/api/nodes/{node.node_id}/lameduck", headers=ACTION) as response:
        assert response.status == 200
    [shown] = (await fleet(http, url))["nodes"]
    assert shown["state"] == "lameduck"


# -- bad input: a clear error, nothing changed ------------------------------------------


async def test_bad_requests_get_clear_errors_and_change_nothing(ui, node, greeter, tmp_path):
    url, http, _ = ui
    status, body = await deploy_form(http, url, greeter, headers={}, trigger="ui.x")
    assert status == 403 and ACTION_HEADER in body["error"]["message"]
    status, body = await deploy_form(http, url, greeter, type="cobol")
    assert status == 400 and "unknown workload type 'cobol'" in body["error"]["message"]
    status, body = await deploy_form(http, url, greeter, name="no spaces please")
    assert status == 400 and "invalid workload name" in body["error"]["message"]
    status, body = await deploy_form(http, url, greeter, argv="--name 'unclosed")
    assert status == 400 and "No closing quotation" in body["error"]["message"]
    status, body = await deploy_form(http, url, greeter, namespace="elsewhere")
    assert status == 400 and "does not watch namespace 'elsewhere'" in body["error"]["message"]
    empty = tmp_path / "empty.js"
    empty.write_text("")
    status, body = await deploy_form(http, url, empty)
    assert status == 400 and "empty" in body["error"]["message"]
    unknown = tmp_path / "notes.txt"
    unknown.write_text("not a program")
    status, body = await deploy_form(http, url, unknown)
    assert status == 400 and "cannot tell the workload type" in body["error"]["message"]
    form = aiohttp.FormData()
    form.add_field("name", "nofile")
    form.add_field("file", b"", filename="")  # what a browser sends when no file was chosen
    async with http.post(f"{url}/api/deploy", data=form, headers=ACTION) as response:
        assert response.status == 400
    async with http.post(f"{url}/api/deploy", json={"file": "x"}, headers=ACTION) as response:
        assert response.status == 400 and "multipart" in (await response.json())["error"]["message"]
    async with http.post(f"{url}/api/workloads/default/nosuchworkload/stop", headers=ACTION) as response:
        assert response.status == 404 and "nosuchworkload" in (await response.json())["error"]["message"]
    async with http.post(f"{url}/api/workloads/default/bad.id/stop", headers=ACTION) as response:
        assert response.status == 400
    async with http.post(f"{url}/api/nodes/NOSUCHNODE/lameduck", headers=ACTION) as response:
        assert response.status == 404
    async with http.get(f"{url}/api/fleet", headers={"Host": "attacker.example:8223"}) as response:
        assert response.status == 403 and "loopback" in (await response.json())["error"]["message"]
    snapshot = await fleet(http, url)
    assert snapshot["workloads"] == [] and snapshot["nodes"][0]["state"] == "running"


async def test_the_log_tail_of_a_bad_id_says_so(ui):
    url, http, _ = ui
    async with http.get(f"{url}/api/logs/default/bad.id") as response:
        assert response.status == 400 and "invalid workload id" in (await response.json())["error"]["message"]
    async with http.get(f"{url}/api/logs/other/abc") as response:
        assert response.status == 400


async def test_several_namespaces_are_shown_grouped(nats_server, node, greeter):
    async with dashboard_on(nats_server.url, "default", "shop") as (url, _):
        async with aiohttp.ClientSession() as http:
            status, summary = await deploy_form(http, url, greeter, namespace="shop", trigger="shop.greet")
            assert status == 201, summary
            snapshot = await fleet(http, url)
    assert snapshot["namespaces"] == ["default", "shop"]
    assert [(w["namespace"], w["name"]) for w in snapshot["workloads"]] == [("shop", "greeter")]


# -- the page and the command ------------------------------------------------------------


async def test_the_page_and_its_assets_come_from_the_dashboard_alone(ui):
    url, http, _ = ui
    async with http.get(f"{url}/") as response:
        assert response.status == 200
        page = await response.text()
        # The browser itself refuses anything not from the dashboard, and framing by another site.
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"
    assets = [a for a in re.findall(r'(?:src|href)="([^"]+)"', page) if a != "data:,"]  # data:, the empty icon
    assert assets and all(a.startswith("/static/") for a in assets), assets
    for asset in assets:
        async with http.get(f"{url}{asset}") as response:
            assert response.status == 200, asset
            text = await response.text()
        assert not re.search(r"https?://", text), f"{asset} refers to the internet"


async def test_nex_ui_serves_until_sigterm(nats_server, node):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nex", "--server", nats_server.url, "ui", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=os.environ.copy())
    try:
        banner = (await asyncio.wait_for(process.stderr.readline(), 20)).decode()
        found = re.search(r"(http://127\.0\.0\.1:\d+/)", banner)
        assert found, banner
        async with aiohttp.ClientSession() as http:
            async with http.get(found.group(1) + "api/fleet") as response:
                assert [n["name"] for n in (await response.json())["nodes"]] == ["test-node"]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "70000 is not in the range"),
    (["--watch", "a.b"], "invalid namespace 'a.b'"),
    (["--refresh", "0"], "0 is not above zero"),
])
async def test_nex_ui_refuses_bad_options(args, message):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nex", "ui", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2 and message in err.decode()


async def test_nex_ui_says_when_the_port_is_taken(nats_server):
    holder = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = holder.sockets[0].getsockname()[1]
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nex", "--server", nats_server.url, "ui", "--port", str(port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(process.communicate(), 20)
    finally:
        holder.close()
    assert process.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in err.decode()


# -- pure parts ------------------------------------------------------------------------


def test_rate_window_counts_calls_and_errors_and_forgets_old_ones():
    window = RateWindow(window_s=10)
    window.record("w1", "f", calls=2, errors=0, now=100.0)
    window.record("w1", "f", calls=1, errors=0, now=101.2, p50_ms=0.2, p99_ms=1.5)
    window.record("w1", "f", calls=1, errors=1, now=105.0)
    window.record("w2", "g", calls=1, errors=0, now=105.0)
    window.record("w3", "h", calls=0, errors=0, now=105.0)  # an interval with only refusals: no rate
    [first, second] = window.rates(now=105.5)
    assert (first.workload_id, first.calls, first.errors) == ("w1", 4, 1)
    assert first.calls_per_s == 0.4 and first.error_ratio == 0.25
    assert (first.p50_ms, first.p99_ms) == (0.2, 1.5) and first.to_dict()["p99_ms"] == 1.5
    assert second.workload_id == "w2"
    left = window.rates(now=111.0)  # the calls of seconds 100 and 101 are out of the window
    assert [(r.workload_id, r.calls, r.errors) for r in left] == [("w1", 1, 1), ("w2", 1, 0)]
    assert window.rates(now=200.0) == []
    with pytest.raises(ValueError) as raised:
        RateWindow(window_s=0)
    assert "too short" in str(raised.value)


async def test_a_page_that_falls_behind_is_dropped_not_waited_for():
    broadcaster = Broadcaster(queue_size=3)
    slow, fast = broadcaster.subscribe(), broadcaster.subscribe()
    for i in range(3):
        broadcaster.publish("n", i)
        assert await fast.next() == encode("n", i)
    assert not slow.dropped
    broadcaster.publish("n", 3)  # slow's queue is full: it is dropped, fast still gets it
    assert slow.dropped and broadcaster.subscriber_count == 1
    assert await fast.next() == encode("n", 3)
    messages = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
    assert messages[-1] is None  # its stream ends; the browser reconnects
    broadcaster.close()
    assert await fast.next() is None


def test_sse_messages_are_one_data_line():
    assert encode("line", {"text": "a\nb"}) == b'event: line\ndata: {"text":"a\\nb"}\n\n'
    with pytest.raises(ValueError):
        encode("bad\nname", {})


async def test_a_dashboard_started_late_shows_the_recent_events_and_rates(nats_server, node, nc, greeter):
    async with dashboard_on(nats_server.url) as (url, _):
        async with aiohttp.ClientSession() as http:
            status, summary = await deploy_form(http, url, greeter, trigger="ui.late")
            assert status == 201, summary
    stats = await nc.subscribe(subjects.events("default", "function_stats"))
    await nc.request("ui.late", b"x", timeout=5)
    await stats.next_msg(timeout=10)  # the call's function_stats, which the stream keeps
    async with dashboard_on(nats_server.url) as (url, _):  # a second dashboard, after the fact
        async with aiohttp.ClientSession() as http:
            snapshot = await fleet(http, url)
    types = [e["type"] for e in snapshot["events"]]
    assert "node_started" in types and "workload_started" in types
    assert [(r["workload_id"], r["calls"]) for r in snapshot["rates"]] == [(summary["id"], 1)]


async def test_malformed_events_on_the_feed_are_skipped_not_fatal(ui, nc):
    url, http, _ = ui
    for payload in (b"not json", b"[1, 2]", b'{"type": "x", "data": [1]}', b'{"data": {"workload_id": 5}}'):
        await nc.publish("$NEX.FEED.default.events.function_invoked", payload)
    await nc.publish("$NEX.FEED.default.events.workload_failed", b'{"id": "e1", "data": "oops"}')
    await nc.flush()

    async def shown():
        events = (await fleet(http, url))["events"]
        return [e for e in events if e["id"] == "e1"]
    [event] = await eventually(shown, timeout=10)
    assert event["type"] == "workload_failed" and event["data"] == {}
