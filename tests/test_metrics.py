"""The node's Prometheus endpoint and ``$SRV.STATS`` (docs/observability.md), scraped from real
nodes running a real JavaScript function and a real native process."""

from __future__ import annotations

import json
import socket

import pytest
from click.testing import CliRunner

from helpers import control, eventually, file_artifact, running_node, scrape, value
from nex.agent.protocol import LATENCY_BOUNDS_MS
from nex.api.apps import AppSpec
from nex.cli import cli as nex_main
from nex.fleet.store import AppStore
from nex.node.config import ConfigError, load_config
from nex.node.metrics import MetricsEndpointError, histogram_buckets

# Fails when asked to, answers otherwise.
MOODY_JS = """
(subject, payload) => {
  const text = new TextDecoder().decode(payload);
  if (text === "fail") throw new Error("asked to fail");
  return "ok " + text;
}
"""


def matching(samples: dict, metric: str, /, **labels: str) -> list[tuple[dict, float]]:
    return [(dict(key), v) for (n, key), v in samples.items()
            if n == metric and all(dict(key).get(k) == want for k, want in labels.items())]


async def srv_stats(nc) -> dict:
    msg = await nc.request("$SRV.STATS.nex-node", b"", timeout=5)
    return json.loads(msg.data)


def test_histogram_buckets_are_cumulative_and_end_with_inf():
    counts = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    counts[0], counts[3], counts[-1] = 2, 1, 4
    buckets = histogram_buckets(counts)
    assert buckets[0] == ("0.001", 2) and buckets[3] == ("0.01", 3)
    assert buckets[-1] == ("+Inf", 7) and len(buckets) == len(LATENCY_BOUNDS_MS) + 1
    assert histogram_buckets([])[-1] == ("+Inf", 0), "an agent without figures yet"


async def test_scrape_counts_invocations_errors_latency_and_usage(nats_server, nc, tmp_path, programs):
    script = tmp_path / "moody.js"
    script.write_text(MOODY_JS)
    async with running_node(nats_server, tmp_path / "node", "scraped", reconciler=False, metrics_port=0,
                            function_stats_interval_s=0.2) as node:
        url = node.metrics.url
        assert url.startswith("http://127.0.0.1:")
        code, function = await control(nc, "DEPLOY", node.node_id, body={
            "name": "moody", "type": "javascript", "artifact": file_artifact(script),
            "triggers": [{"subject": "nex.default.moody"}]})
        assert code is None, function
        code, service = await control(nc, "DEPLOY", node.node_id, body={
            "name": "ticker", "type": "native", "artifact": file_artifact(programs["ticker"])})
        assert code is None, service
        code, refused = await control(nc, "DEPLOY", node.node_id, body={"name": "no type"})
        assert code == 400, refused

        calls, failing = 12, {3, 7, 11}
        for index in range(calls):
            msg = await nc.request("nex.default.moody", b"fail" if index in failing else b"%d" % index, timeout=10)
            assert (msg.headers or {}).get("Nats-Service-Error-Code") == ("500" if index in failing else None)

        fn = {"namespace": "default", "name": "moody", "workload_id": function["id"]}

        async def counted():
            samples = await scrape(url)
            return samples if value(samples, "nex_function_invocations_total", **fn) == calls else None
        samples = await eventually(counted, timeout=10, interval=0.2)

        assert value(samples, "nex_function_errors_total", **fn) == len(failing)
        assert value(samples, "nex_function_rejected_total", **fn) == 0
        assert value(samples, "nex_function_failure_events_dropped_total", **fn) == 0  # 3 failures: within the burst

        async def rated():  # the last function_stats of the calls: their rate and latency
            samples = await scrape(url)
            return samples if value(samples, "nex_function_calls_per_second", **fn) is not None else None
        samples = await eventually(rated, timeout=10, interval=0.2)
        assert value(samples, "nex_function_calls_per_second", **fn) > 0
        assert 0 <= value(samples, "nex_function_recent_latency_seconds", **fn, quantile="0.5") \
            <= value(samples, "nex_function_recent_latency_seconds", **fn, quantile="0.99")
        assert value(samples, "nex_function_latency_seconds_count", **fn) == calls
        assert value(samples, "nex_function_latency_seconds_bucket", **fn, le="+Inf") == calls
        assert value(samples, "nex_function_latency_seconds_sum", **fn) > 0
        ticker = {"namespace": "default", "name": "ticker", "workload_id": service["id"], "type": "native"}
        assert value(samples, "nex_workload_memory_bytes", **ticker) > 0
        assert value(samples, "nex_workload_cpu_seconds_total", **ticker) is not None
        assert value(samples, "nex_node_workloads", type="javascript", state="running") == 1
        assert value(samples, "nex_node_workloads", type="native", state="running") == 1
        assert value(samples, "nex_node_agent_up", engine="javascript") == 1
        assert value(samples, "nex_node_uptime_seconds") > 0
        assert value(samples, "nex_node_memory_bytes") >= value(samples, "nex_node_memory_available_bytes") > 0
        [(info, _)] = matching(samples, "nex_node_info")
        assert info["node_id"] == node.node_id and info["state"] == "running"
        assert value(samples, "nex_control_requests_total", endpoint="deploy") == 3
        assert value(samples, "nex_control_errors_total", endpoint="deploy") == 1

        # $SRV.STATS reports the same counts: control verbs, and each function as an endpoint.
        stats = await srv_stats(nc)
        assert stats["type"] == "io.nats.micro.v1.stats_response"
        endpoints = {e["name"]: e for e in stats["endpoints"]}
        assert endpoints["deploy"]["num_requests"] == 3 and endpoints["deploy"]["num_errors"] == 1
        moody = endpoints["function-moody"]
        assert (moody["num_requests"], moody["num_errors"]) == (calls, len(failing))
        assert moody["subject"] == "nex.default.moody" and moody["data"]["workload_id"] == function["id"]
        assert moody["processing_time"] > 0 and moody["average_processing_time"] == moody["processing_time"] // calls

        # Nothing is counted twice however often it is scraped.
        again = await scrape(url)
        assert value(again, "nex_function_invocations_total", **fn) == calls
        assert value(again, "nex_function_latency_seconds_count", **fn) == calls


async def test_placements_and_reconciler_actions_are_counted(nats_server, nc, tmp_path, programs):
    async with running_node(nats_server, tmp_path / "node", "placer", metrics_port=0, registry_interval_s=0.5,
                            node_timeout_s=2.0, lease_s=2.0, reconcile_interval_s=0.3,
                            fleet_keys=tmp_path / "fleet") as node:
        store = AppStore(nc)
        await store.ensure()
        ticker = {"name": "ticker", "type": "native", "artifact": file_artifact(programs["ticker"])}
        await store.apply(AppSpec.model_validate({"name": "shop", "workloads": [{**ticker, "replicas": 2}]}), None)

        async def placed():
            samples = await scrape(node.metrics.url)
            return samples if value(samples, "nex_reconciler_actions_total", action="place") == 2 else None
        samples = await eventually(placed, timeout=20, interval=0.2)
        assert value(samples, "nex_reconciler_leading") == 1
        assert value(samples, "nex_reconciler_passes_total") >= 1
        assert value(samples, "nex_bids_total", result="bid") >= 2
        assert value(samples, "nex_bid_deploys_total") == 2

        await store.apply(AppSpec.model_validate({"name": "shop", "workloads": [{**ticker, "replicas": 1}]}), None)

        async def stopped():
            samples = await scrape(node.metrics.url)
            return value(samples, "nex_reconciler_actions_total", action="stop") == 1
        await eventually(stopped, timeout=20, interval=0.2)
        final = await scrape(node.metrics.url)
        assert value(final, "nex_reconciler_actions_total", action="rollback") == 0
        assert value(final, "nex_bid_deploys_total") == 2


async def test_a_metrics_port_in_use_stops_the_node_before_it_starts(nats_server, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsEndpointError) as caught:
            async with running_node(nats_server, tmp_path / "node", "clash", reconciler=False, metrics_port=port):
                pass
    assert f"127.0.0.1:{port} is already in use" in caught.value.message
    assert not (tmp_path / "node" / "handles").exists(), "the node stopped before it set anything up"


def test_node_up_says_the_metrics_port_is_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(nex_main, ["node", "up", "--state-dir", str(tmp_path / "state"),
                                               "--metrics-port", str(port)])
    assert result.exit_code == 1
    assert f"127.0.0.1:{port} is already in use: give another --metrics-port" in result.output
    assert not (tmp_path / "state" / "jetstream").exists(), "no embedded server was started"


def test_bad_metrics_settings_are_refused():
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"metrics_port": 70000})
    assert "metrics_port" in str(caught.value)
    result = CliRunner().invoke(nex_main, ["node", "up", "--metrics-port", "-1"])
    assert result.exit_code == 2 and "--metrics-port" in result.output
