"""Garbage in the stream: every input offset ends as exactly one output or one dead letter."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # exported, not in stubs
    AdminClient,
    NewTopic,
)

from streamer.demo.data import generate_transactions
from streamer.errors import DeliveryFailed
from streamer.kafka.admin import create_topics
from streamer.records import DETAIL_HEADER, ERROR_HEADER
from streamer.testing import RunningAgent, committed_offsets, consume, produce
from tests.conftest import TRANSACTION, TopologyFactory
from tests.onnx_models import write_tiny_model

pytestmark = pytest.mark.integration

N = 5000


def _garbage(kind: int, event: dict[str, Any]) -> tuple[bytes | None, str]:
    """A bad value of one of several kinds, and the dead-letter reason it must get."""
    if kind == 0:
        return random.Random(len(str(event))).randbytes(3), "undecodable"
    if kind == 1:
        return None, "empty_value"
    if kind == 2:
        return TRANSACTION.encode(event)[:-3], "undecodable"  # truncated
    if kind == 3:
        return TRANSACTION.encode({**event, "amount": math.nan}), "non_finite"
    if kind == 4:
        return TRANSACTION.encode({**event, "merchant_risk": math.inf}), "non_finite"
    return json.dumps(event).encode(), "undecodable"  # JSON where Avro is expected


def test_every_offset_ends_as_one_output_or_one_dead_letter(
    make_topology: TopologyFactory, kafka: str
) -> None:
    topology = make_topology()
    events = generate_transactions(N, seed=21)
    rng = random.Random(5)
    bad_at = sorted(rng.sample(range(N), N // 100))
    expected_reason: dict[bytes, str] = {}
    messages: list[tuple[bytes | None, bytes | None]] = []
    for i, event in enumerate(events):
        key = f"k-{i}".encode()
        if i in bad_at:
            value, reason = _garbage(len(expected_reason) % 6, event)
            expected_reason[key] = reason
        else:
            value = TRANSACTION.encode(event)
        messages.append((key, value))
    produce(kafka, topology.input.topic, messages)

    with RunningAgent(topology) as running:
        running.wait_until(N)
        stats = running.stop()
    assert stats.consumed == N
    assert stats.dead_letters == len(bad_at)

    inputs = {r.key: (r.partition, r.offset) for r in consume(kafka, topology.input.topic, N)}
    outputs = consume(kafka, topology.output.topic, N - len(bad_at))
    dead = consume(kafka, topology.dead_letter.topic, len(bad_at))
    served_keys = [r.key for r in outputs]
    dead_keys = [r.key for r in dead]
    assert len(served_keys) == len(set(served_keys)) == N - len(bad_at)
    assert len(dead_keys) == len(set(dead_keys)) == len(bad_at)
    assert set(served_keys).isdisjoint(dead_keys)
    assert set(served_keys) | set(dead_keys) == set(inputs)

    originals = dict(messages)
    for record in dead:
        assert record.key is not None
        partition, offset = inputs[record.key]
        assert record.value == originals[record.key]  # untouched bytes
        assert record.headers[ERROR_HEADER].decode() == expected_reason[record.key]
        assert record.headers[DETAIL_HEADER]
        assert record.headers["streamer.topic"].decode() == topology.input.topic
        assert int(record.headers["streamer.partition"]) == partition
        assert int(record.headers["streamer.offset"]) == offset
    assert {k: v for k, v in stats.dead_letter_reasons.items()} == {
        r: list(expected_reason.values()).count(r) for r in set(expected_reason.values())
    }


def test_a_model_returning_nan_dead_letters_that_event_and_serves_the_rest(
    make_topology: TopologyFactory, kafka: str, tmp_path: Path
) -> None:
    model = write_tiny_model(tmp_path / "overflowing.onnx")
    topology = make_topology(
        variants=[{"name": "tiny", "model": str(model), "weight": 1.0}],
        input=lambda name: {"topic": f"{name}-in", "format": "json"},
    )
    events = [
        {"id": f"e{i}", "amount": 1.0 + i, "age_days": 2.0, "hour": 3, "merchant_risk": 0.5}
        for i in range(50)
    ]
    events[7]["amount"] = events[7]["age_days"] = 3e38  # finite input, overflowing output
    produce(kafka, topology.input.topic, ((None, json.dumps(e).encode()) for e in events))
    with RunningAgent(topology) as running:
        running.wait_until(len(events))
        stats = running.stop()
    assert stats.served == 49
    assert stats.dead_letter_reasons == {"non_finite_output": 1}
    (dead,) = consume(kafka, topology.dead_letter.topic, 1)
    assert json.loads(dead.value or b"")["id"] == "e7"
    assert b"tiny" in dead.headers[DETAIL_HEADER]
    lake = consume(kafka, topology.lake.topic, 49)
    assert "e7" not in {json.loads(r.value or b"")["id"] for r in lake}


def test_a_record_the_broker_refuses_stops_the_agent_uncommitted_and_names_the_topic(
    make_topology: TopologyFactory, kafka: str
) -> None:
    topology = make_topology(partitions=1, create=False)
    admin = AdminClient({"bootstrap.servers": kafka})
    # The dead-letter topic refuses records larger than 64 bytes: a dead letter that cannot
    # be written is a real loss, so the agent must stop without committing its batch.
    tiny = NewTopic(topology.dead_letter.topic, 1, 1, config={"max.message.bytes": "64"})
    admin.create_topics([tiny])[topology.dead_letter.topic].result()
    del admin  # the raised error's traceback would keep it (and its log lines) alive
    create_topics(topology)
    produce(kafka, topology.input.topic, [(b"k", b"not avro " * 20)])
    with (
        RunningAgent(topology) as running,
        pytest.raises(DeliveryFailed, match=f"not acknowledged.*{topology.dead_letter.topic}"),
    ):
        running.wait_until(10**9, timeout_s=60)
    committed = committed_offsets(kafka, topology.group_id, topology.input.topic, 1)
    assert committed[0] < 0, "a batch with a lost record must not be committed"
