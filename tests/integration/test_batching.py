"""Micro-batching on a real broker, observed through the streamer_batch_size histogram."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from streamer.demo.data import generate_transactions
from streamer.testing import RunningAgent, produce
from tests.conftest import TopologyFactory, keyed_transactions

pytestmark = pytest.mark.integration

MAX_WAIT_S = 3.0


def _bucket(registry: CollectorRegistry, le: str) -> float:
    return registry.get_sample_value("streamer_batch_size_bucket", {"le": le}) or 0.0


def test_a_trickle_shares_one_batch_that_closes_when_the_wait_runs_out(
    make_topology: TopologyFactory, kafka: str
) -> None:
    topology = make_topology(
        partitions=1, batching={"max_batch_size": 1000, "max_wait_ms": int(MAX_WAIT_S * 1000)}
    )
    values = keyed_transactions(generate_transactions(12, seed=31))
    producer = Producer({"bootstrap.servers": kafka})
    with RunningAgent(topology) as running:
        deadline = time.monotonic() + 60
        while not running.agent.assigned:
            assert time.monotonic() < deadline, "no partition assigned within 60 s"
            time.sleep(0.05)
        started = time.monotonic()
        for key, value in values:  # a trickle: 12 events in well under MAX_WAIT_S
            producer.produce(topology.input.topic, value, key)
            assert producer.flush(10) == 0
            time.sleep(0.05)
        running.wait_until(len(values), timeout_s=MAX_WAIT_S + 30)
        elapsed = time.monotonic() - started
        stats = running.stop()
    assert stats.served == len(values)
    # The batch opened with the first event and gathered the rest; it never filled, so it
    # closed when the wait ran out: not before, and not much later.
    assert (stats.batches, stats.largest_batch) == (1, len(values))
    assert MAX_WAIT_S <= elapsed < MAX_WAIT_S + 5


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
    assert stats.largest_batch == 200
    assert registry.get_sample_value("streamer_batch_size_sum") == n
    # Batches of 129..200 events (the max) carry nearly everything; a few partial ones at
    # partition ends are fine.
    assert full >= 0.8 * stats.batches
    assert stats.batches <= n / 200 + 5
