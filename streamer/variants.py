"""The variants a topology serves: their loaded models, the router and the shadows.

Changes (new weights, a new model for a variant) are staged from any thread and take effect
at the next batch boundary (`snapshot`), so every batch is routed, scored and recorded by
one consistent set, and the gauges that describe the set follow it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from streamer.config import Topology
from streamer.metrics import Metrics
from streamer.models import Model, check_compatible
from streamer.routing import Router


@dataclass(frozen=True)
class VariantSet:
    """What one batch is scored with; never changes once built."""

    router: Router
    """Weights over the served variants."""
    models: Mapping[str, Model]
    """Every variant's model, served and shadow."""
    shadows: tuple[str, ...]
    """Variants that score every event for the lake and are never served."""


class Variants:
    """Owns the variants' models and weights, and the `streamer_variant_weight` and
    `streamer_model_info` gauges."""

    def __init__(self, topology: Topology, models: Mapping[str, Model], metrics: Metrics) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._current = VariantSet(
            Router(topology.served_weights()),
            dict(models),
            tuple(v.name for v in topology.shadows),
        )
        self._staged: VariantSet | None = None
        self._publish(None, self._current)

    def snapshot(self) -> VariantSet:
        """The set for the next batch, with every staged change applied."""
        with self._lock:
            staged, self._staged = self._staged, None
        if staged is not None:
            previous, self._current = self._current, staged
            self._publish(previous, staged)
        return self._current

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Stage new weights for exactly the served variants; ValueError if they are not."""
        with self._lock:
            base = self._staged or self._current
            if set(weights) != set(base.router.names):
                raise ValueError(
                    f"weights must name the served variants {', '.join(base.router.names)}, "
                    f"got {', '.join(weights) or 'none'}"
                )
            self._staged = dataclasses.replace(base, router=Router(weights))

    def swap_model(self, name: str, model: Model) -> Model:
        """Stage `model` for variant `name` if it can stand in for the one it replaces
        (ModelError otherwise); returns the staged model (outputs in the variant's order)."""
        with self._lock:
            base = self._staged or self._current
            checked = check_compatible(name, base.models[name], model)
            self._staged = dataclasses.replace(base, models={**base.models, name: checked})
        return checked

    def _publish(self, previous: VariantSet | None, current: VariantSet) -> None:
        gauges = self._metrics
        for name, weight in current.router.weights.items():
            gauges.variant_weight.labels(name).set(weight)
        for name, model in current.models.items():
            old = previous.models[name] if previous is not None else None
            if old is not None and (old.version, old.sha256) != (model.version, model.sha256):
                with contextlib.suppress(KeyError):
                    gauges.model_info.remove(name, old.version, old.sha256)
            gauges.model_info.labels(name, model.version, model.sha256).set(1)
