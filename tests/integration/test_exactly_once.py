"""Exactly-once on a real broker: every event ends as exactly one output or dead letter for a
read_committed consumer, also across aborted transactions."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from streamer.demo.data import generate_transactions
from streamer.testing import RunningAgent, consume, produce
from tests.conftest import TRANSACTION, TopologyFactory

pytestmark = pytest.mark.integration


def with_garbage(n: int, seed: int) -> list[tuple[bytes | None, bytes | None]]:
    """n keyed demo events, 1% of them garbage bytes (dead letters)."""
    rng = random.Random(seed)
    items: list[tuple[bytes | None, bytes | None]] = []
    for event in generate_transactions(n, seed=seed):
        key = str(event["id"]).encode()
        value = rng.randbytes(7) if rng.random() < 0.01 else TRANSACTION.encode(event)
        items.append((key, value))
    return items


def test_exactly_once_serves_every_event_once_in_transactions(
    make_topology: TopologyFactory, kafka: str
) -> None:
    n = 6000
    topology = make_topology(guarantee="exactly_once", exactly_once={"commit_interval_ms": 50})
    items = with_garbage(n, seed=21)
    produce(kafka, topology.input.topic, items)
    with RunningAgent(topology) as running:
        running.wait_until(n)
        stats = running.stop()
    outputs = consume(kafka, topology.output.topic, stats.served)
    dead = consume(kafka, topology.dead_letter.topic, stats.dead_letters)
    ids = Counter(json.loads(r.value or b"")["id"] for r in outputs)
    ids.update((r.key or b"").decode() for r in dead)
    assert set(ids) == {k.decode() for k, _ in items if k} and max(ids.values()) == 1
    assert 0 < stats.dead_letters < n * 0.03
    committed = running.agent.metrics.value("streamer_transactions_total", result="committed")
    assert committed >= 1
