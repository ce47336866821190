"""The agent's /metrics, /healthz and /readyz over HTTP while it serves."""

from __future__ import annotations

import time
import urllib.request

import pytest

from streamer.agent import LAG_INTERVAL_S
from streamer.demo.data import generate_transactions
from streamer.testing import RunningAgent, produce
from tests.conftest import TopologyFactory, keyed_transactions

pytestmark = pytest.mark.integration


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_metrics_endpoints_report_what_the_agent_did(
    make_topology: TopologyFactory, kafka: str
) -> None:
    topology = make_topology(partitions=2, metrics={"port": 0})
    items = keyed_transactions(generate_transactions(500, seed=51))
    items.append((b"bad", b"\x00garbage"))
    produce(kafka, topology.input.topic, items)
    with RunningAgent(topology) as running:
        running.wait_until(len(items))
        port = running.agent.metrics_port
        assert port is not None
        assert _get(port, "/healthz")[0] == 200
        assert _get(port, "/readyz")[0] == 200
        assert _get(port, "/nope")[0] == 404
        # Lag is refreshed every LAG_INTERVAL_S; everything is consumed, so it settles at 0
        # on both partitions.
        settled = [
            'streamer_consumer_lag{partition="0"} 0.0',
            'streamer_consumer_lag{partition="1"} 0.0',
        ]
        deadline = time.monotonic() + 10 * LAG_INTERVAL_S
        status, body = _get(port, "/metrics")
        while not all(s in body for s in settled) and time.monotonic() < deadline:
            time.sleep(0.2)
            status, body = _get(port, "/metrics")
        running.stop()
    assert all(s in body for s in settled), body
    assert status == 200
    assert "streamer_events_consumed_total 501.0" in body
    assert 'streamer_predictions_total{shadow="false",variant="champion"} 500.0' in body
    assert 'streamer_dead_letters_total{reason="undecodable"} 1.0' in body
    assert "streamer_batch_size_sum 501.0" in body  # every event in exactly one batch
    assert 'streamer_inference_seconds_count{variant="champion"}' in body
    assert "streamer_end_to_end_seconds_count 500.0" in body
    assert 'streamer_variant_weight{variant="champion"} 1.0' in body
    assert 'streamer_model_info{sha256="' in body and 'version="fraud_v2"' in body
