"""Variants: changes are staged and take effect at the next batch boundary, gauges follow."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from streamer.config import Topology, load_topology
from streamer.metrics import Metrics
from streamer.models import Model, load_model
from streamer.variants import Variants
from tests.onnx_models import write_tiny_model


@pytest.fixture
def topology(tmp_path: Path) -> Topology:
    for name in ("a", "b", "s"):
        write_tiny_model(tmp_path / f"{name}.onnx")
    spec = {
        "name": "t",
        "input": {"topic": "in"},
        "features": ["f1", "f2", "f3", "f4"],
        "variants": [
            {"name": "a", "model": "a.onnx", "weight": 3},
            {"name": "b", "model": "b.onnx", "weight": 1},
            {"name": "s", "model": "s.onnx", "shadow": True},
        ],
        "output": {"topic": "out"},
        "lake": {"topic": "lake"},
        "dead_letter": {"topic": "dlq"},
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(spec))
    return load_topology(tmp_path / "t.yaml")


def models(topology: Topology) -> dict[str, Model]:
    return {v.name: load_model(v.model, 4) for v in topology.variants}


def weights(metrics: Metrics) -> dict[str, float]:
    return metrics.by_label("streamer_variant_weight", "variant")


def test_configured_weights_are_normalised_and_published(topology: Topology) -> None:
    metrics = Metrics()
    variants = Variants(topology, models(topology), metrics)
    snap = variants.snapshot()
    assert snap.router.weights == {"a": 0.75, "b": 0.25}
    assert snap.shadows == {"s": 1.0}
    assert weights(metrics) == {"a": 0.75, "b": 0.25}


def test_a_staged_change_applies_at_the_next_snapshot_only(topology: Topology) -> None:
    metrics = Metrics()
    variants = Variants(topology, models(topology), metrics)
    in_progress = variants.snapshot()
    variants.stage({"b": 1.0}, {}, {})
    assert in_progress.router.weights == {"a": 0.75, "b": 0.25}  # the batch being served
    assert in_progress.shadows == {"s": 1.0}
    assert weights(metrics) == {"a": 0.75, "b": 0.25}
    assert variants.latest.router.weights == {"b": 1.0}
    snap = variants.snapshot()
    assert snap.router.weights == {"b": 1.0} and snap.shadows == {}
    # A served variant left out (disabled) shows weight 0.
    assert weights(metrics) == {"a": 0.0, "b": 1.0}


@pytest.mark.parametrize("bad", [{}, {"a": -1.0, "b": 2.0}, {"a": 0.0, "b": 0.0}])
def test_weights_the_router_cannot_use_are_refused(
    topology: Topology, bad: dict[str, float]
) -> None:
    variants = Variants(topology, models(topology), Metrics())
    with pytest.raises(ValueError, match="weights"):
        variants.stage(bad, {}, {})
    assert variants.snapshot().router.weights == {"a": 0.75, "b": 0.25}


def test_a_staged_model_serves_from_the_next_batch_and_model_info_follows(
    topology: Topology, tmp_path: Path
) -> None:
    metrics = Metrics()
    variants = Variants(topology, models(topology), metrics)
    old = variants.snapshot().models["b"]
    new = dataclasses.replace(load_model(write_tiny_model(tmp_path / "b2.onnx"), 4), version="2")
    variants.stage({"a": 0.5, "b": 0.5}, {"s": 1.0}, {"b": new})
    assert variants.snapshot().models["b"].version == "2"
    info = {
        (s.labels["variant"], s.labels["version"])
        for m in metrics.registry.collect()
        for s in m.samples
        if s.name == "streamer_model_info"
    }
    assert ("b", "2") in info and ("b", old.version) not in info
    assert ("a", "a") in info and ("s", "s") in info
