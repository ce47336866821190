"""Horizontal scale: two agents in one consumer group split the partitions and lose nothing."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from streamer.demo.data import generate_transactions
from streamer.testing import RunningAgent, consume, produce
from tests.conftest import TopologyFactory, keyed_transactions

pytestmark = pytest.mark.integration

N = 20_000


def test_two_agents_share_the_partitions_and_serve_every_event(
    make_topology: TopologyFactory, kafka: str
) -> None:
    topology = make_topology(partitions=6, batching={"max_batch_size": 128, "max_wait_ms": 10})
    items = keyed_transactions(generate_transactions(N, seed=61))
    produce(kafka, topology.input.topic, items[: N // 2])
    with RunningAgent(topology) as first:
        first.wait_until(1000)  # the first agent owns everything and is mid-stream ...
        with RunningAgent(topology) as second:  # ... when the second joins: a rebalance
            deadline = time.monotonic() + 60
            while not (second.agent.assigned and first.agent.assigned):
                assert time.monotonic() < deadline, "the group did not rebalance"
                time.sleep(0.05)
            assert set(first.agent.assigned).isdisjoint(second.agent.assigned)
            produce(kafka, topology.input.topic, items[N // 2 :])
            outputs = consume(kafka, topology.output.topic, N, timeout_s=120)
            stats_second = second.stop()
        stats_first = first.stop()

    ids = Counter(json.loads(r.value or b"")["id"] for r in outputs)
    assert set(ids) == {str(e["id"]) for e in generate_transactions(N, seed=61)}
    assert stats_second.served > 0, "the second agent must have received partitions"
    # Revocation flushes and commits what was served; only a batch being gathered while
    # partitions moved may be served twice.
    duplicates = sum(c - 1 for c in ids.values())
    assert duplicates <= 2 * 128
    assert stats_first.served + stats_second.served == N + duplicates
