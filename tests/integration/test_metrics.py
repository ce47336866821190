"""The agent's /metrics, /healthz and /readyz over HTTP while it serves."""

from __future__ import annotations

import io
import urllib.request

import fastavro
import pytest

from streamer.codecs.avro import load_schema
from streamer.demo.data import generate_transactions
from streamer.testing import RunningAgent, produce
from tests.conftest import SCHEMAS, TopologyFactory

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
    schema = load_schema(SCHEMAS / "transaction.avsc")
    items: list[tuple[bytes | None, bytes | None]] = []
    for event in generate_transactions(500, seed=51):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, event)
        items.append((str(event["id"]).encode(), buf.getvalue()))
    items.append((b"bad", b"\x00garbage"))
    produce(kafka, topology.input.topic, items)
    with RunningAgent(topology) as running:
        running.wait_until(len(items))
        port = running.agent.metrics_port
        assert port is not None
        assert _get(port, "/healthz")[0] == 200
        assert _get(port, "/readyz")[0] == 200
        assert _get(port, "/nope")[0] == 404
        # Lag is refreshed every LAG_INTERVAL_S; everything is consumed, so it settles at 0.
        running.agent._lag_updated = 0.0
        status, body = _get(port, "/metrics")
        running.stop()
    assert status == 200
    assert "streamer_events_consumed_total 501.0" in body
    assert 'streamer_predictions_total{shadow="false",variant="champion"} 500.0' in body
    assert 'streamer_dead_letters_total{reason="undecodable"} 1.0' in body
    assert "streamer_batch_size_count" in body
    assert 'streamer_inference_seconds_count{variant="champion"}' in body
    assert "streamer_end_to_end_seconds_count 500.0" in body
    assert 'streamer_variant_weight{variant="champion"} 1.0' in body
    assert 'streamer_model_info{sha256="' in body and 'version="fraud_v2"' in body
