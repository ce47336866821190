"""Micro-batching on a real broker, observed through the streamer_batch_size histogram."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from streamer.demo.data import generate_transactions
from streamer.testing import RunningAgent, produce
from tests.conftest import TopologyFactory, keyed_transactions

pytestmark = pytest.mark.integration


def _bucket(registry: CollectorRegistry, le: str) -> float:
    return registry.get_sample_value("streamer_batch_size_bucket", {"le": le}) or 0.0


def test_trickle_is_served_in_partial_batches(make_topology: TopologyFactory, kafka: str) -> None:
    topology = make_topology(partitions=1, batching={"max_batch_size": 1000, "max_wait_ms": 2000})
    values = keyed_transactions(generate_transactions(12, seed=31))
    with RunningAgent(topology) as running:
        for item in values:  # a trickle: far fewer events than a batch holds
            produce(kafka, topology.input.topic, [item])
            time.sleep(0.05)
        # The batch never fills, so these are served only because the wait ran out.
        running.wait_until(len(values))
        registry = running.agent.metrics.registry
        batches = registry.get_sample_value("streamer_batch_size_count") or 0.0
        total = registry.get_sample_value("streamer_batch_size_sum") or 0.0
        stats = running.stop()
    assert stats.served == len(values)
    assert total == len(values)
    assert batches >= 1
    assert stats.largest_batch < 1000


def test_flood_fills_batches_to_max_batch_size(make_topology: TopologyFactory, kafka: str) -> None:
    topology = make_topology(partitions=2, batching={"max_batch_size": 200, "max_wait_ms": 1000})
    n = 4000
    # All events are there before the agent starts.
    produce(kafka, topology.input.topic, keyed_transactions(generate_transactions(n, seed=32)))
    with RunningAgent(topology) as running:
        running.wait_until(n)
        registry = running.agent.metrics.registry
        stats = running.stop()
    full = _bucket(registry, "256.0") - _bucket(registry, "128.0")
    batches = registry.get_sample_value("streamer_batch_size_count") or 0.0
    assert stats.largest_batch == 200
    assert registry.get_sample_value("streamer_batch_size_sum") == n
    # Batches of 129..200 events (the max) carry nearly everything; a few partial ones at
    # partition ends are fine.
    assert full >= 0.8 * batches
    assert batches <= n / 200 + 5
