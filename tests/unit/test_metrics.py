"""Bulk histogram observation must equal one `observe` per value."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from streamer.metrics import LATENCY_BUCKETS, observe_many


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def test_observe_many_matches_observe_including_bucket_edges() -> None:
    rng = np.random.default_rng(3)
    amounts = np.concatenate(
        [
            rng.exponential(0.05, 5000),
            np.array(LATENCY_BUCKETS),  # exactly on a bound: counted in that bucket (le)
            np.array([0.0, 1e9]),  # below every bound, and beyond the last finite one
        ]
    )
    one, bulk = CollectorRegistry(), CollectorRegistry()
    h_one = Histogram("x_seconds", "x", buckets=LATENCY_BUCKETS, registry=one)
    h_bulk = Histogram("x_seconds", "x", buckets=LATENCY_BUCKETS, registry=bulk)
    for a in amounts.tolist():
        h_one.observe(a)
    observe_many(h_bulk, amounts[:100])
    observe_many(h_bulk, amounts[100:])
    observe_many(h_bulk, np.array([]))
    expected, got = _samples(one), _samples(bulk)
    sum_key = ("x_seconds_sum", "")
    assert abs(got.pop(sum_key) - expected.pop(sum_key)) < 1e-6  # float addition order
    assert got == expected  # every bucket and the count, exactly
