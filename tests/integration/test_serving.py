"""Events in, predictions out: codecs both ways, keys, ids and lake records on a real broker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from streamer.codecs.avro import AvroDecoder
from streamer.demo.data import feature_matrix, generate_transactions
from streamer.kafka.clients import make_admin
from streamer.testing import RunningAgent, consume, produce
from tests.conftest import SCHEMAS, TRANSACTION, TopologyFactory, keyed_transactions

pytestmark = pytest.mark.integration

N = 3000


SCORE = AvroDecoder(SCHEMAS / "fraud_score.avsc")
LAKE = AvroDecoder(SCHEMAS / "fraud_lake.avsc")


def _expected(model: Path, events: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    label, proba = session.run(["label", "probabilities"], {"features": feature_matrix(events)})
    return {"label": label, "probabilities": proba}


def test_avro_in_json_out(
    make_topology: TopologyFactory, kafka: str, demo_models: dict[str, Path]
) -> None:
    topology = make_topology()
    events = generate_transactions(N, seed=11)
    # Half keyed by the event id, half unkeyed: the id must then come from the record.
    produce(
        kafka,
        topology.input.topic,
        (
            (str(e["id"]).encode() if i % 2 else None, TRANSACTION.encode(e))
            for i, e in enumerate(events)
        ),
    )
    with RunningAgent(topology) as running:
        running.wait_until(N)
        stats = running.stop()
    assert stats.served == N and stats.dead_letters == 0

    outputs = consume(kafka, topology.output.topic, N)
    assert len(outputs) == N
    expected = _expected(demo_models["fraud_v2"], events)
    index = {e["id"]: i for i, e in enumerate(events)}
    for record in outputs:
        value = json.loads(record.value or b"")
        i = index[value["id"]]
        assert record.key == (str(value["id"]).encode() if i % 2 else None)
        assert value["variant"] == "champion"
        assert value["model_version"] == "fraud_v2"
        assert value["label"] == int(expected["label"][i])
        np.testing.assert_allclose(value["probabilities"], expected["probabilities"][i], atol=1e-6)
        assert value["ts_predicted"] >= value["ts_event"]
    assert sorted(json.loads(r.value or b"")["id"] for r in outputs) == sorted(map(str, index))

    lake = [json.loads(r.value or b"") for r in consume(kafka, topology.lake.topic, N)]
    assert sorted(r["id"] for r in lake) == sorted(map(str, index))
    features = feature_matrix(events)
    for entry in lake:
        i = index[entry["id"]]
        assert entry["shadow"] is False and entry["propensity"] == 1.0
        assert entry["topology"] == topology.name
        np.testing.assert_allclose(entry["features"], features[i], rtol=1e-6)
        # Fetched to predicted: inside the event's own time to prediction (ms, truncated).
        assert 0 < entry["latency_ms"] <= entry["ts_predicted"] - entry["ts_event"] + 1


def test_json_in_avro_out(
    make_topology: TopologyFactory, kafka: str, demo_models: dict[str, Path]
) -> None:
    topology = make_topology(
        input=lambda name: {"topic": f"{name}-in", "format": "json"},
        output=lambda name: {
            "topic": f"{name}-out",
            "format": "avro",
            "schema": str(SCHEMAS / "fraud_score.avsc"),
        },
        lake=lambda name: {
            "topic": f"{name}-lake",
            "format": "avro",
            "schema": str(SCHEMAS / "fraud_lake.avsc"),
        },
    )
    events = generate_transactions(N, seed=12)
    produce(
        kafka,
        topology.input.topic,
        ((str(e["id"]).encode(), json.dumps(e).encode()) for e in events),
    )
    with RunningAgent(topology) as running:
        running.wait_until(N)
        running.stop()
    outputs = [SCORE.decode(r.value) for r in consume(kafka, topology.output.topic, N)]
    assert len(outputs) == N
    expected = _expected(demo_models["fraud_v2"], events)
    index = {e["id"]: i for i, e in enumerate(events)}
    for value in outputs:
        i = index[value["id"]]
        assert value["label"] == int(expected["label"][i])
        np.testing.assert_allclose(value["probabilities"], expected["probabilities"][i], atol=1e-6)
    lake = [LAKE.decode(r.value) for r in consume(kafka, topology.lake.topic, N)]
    assert len(lake) == N
    assert {r["id"] for r in lake} == set(index)
    assert all(len(r["features"]) == 4 and r["shadow"] is False for r in lake)


def test_with_the_lake_off_only_outputs_are_written(
    make_topology: TopologyFactory, kafka: str
) -> None:
    topology = make_topology(lake=lambda name: {"topic": f"{name}-lake", "enabled": False})
    events = generate_transactions(500, seed=17)
    produce(kafka, topology.input.topic, keyed_transactions(events))
    with RunningAgent(topology) as running:
        running.wait_until(len(events))
        stats = running.stop()
    assert stats.served == len(events)
    assert len(consume(kafka, topology.output.topic, len(events))) == len(events)
    admin = make_admin(topology.kafka)
    assert topology.lake.topic not in admin.list_topics(timeout=10).topics  # never needed
