"""The variants a topology serves: their loaded models, the router and the shadows.

Changes (new weights, a variant disabled, a new model version) are staged from any thread
and take effect at the next batch boundary (`snapshot`), so every batch is routed, scored
and recorded by one consistent set, and the gauges that describe the set follow it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from streamer.config import Topology
from streamer.metrics import Metrics
from streamer.models import Model
from streamer.routing import Router


@dataclass(frozen=True)
class VariantSet:
    """What one batch is scored with; never changes once built."""

    router: Router
    """Weights over the enabled served variants."""
    models: Mapping[str, Model]
    """Every variant's model, served and shadow (disabled ones too)."""
    shadows: Mapping[str, float]
    """Enabled shadow variant -> share of events it scores (a sample by id)."""


class Variants:
    """Owns the variant set in force and the `streamer_variant_weight` and
    `streamer_model_info` gauges."""

    def __init__(self, topology: Topology, models: Mapping[str, Model], metrics: Metrics) -> None:
        self._metrics = metrics
        self._served = [v.name for v in topology.served]
        self._lock = threading.Lock()
        self._current = VariantSet(
            Router(topology.served_weights()),
            dict(models),
            {v.name: v.sample_rate for v in topology.shadows},
        )
        self._staged: VariantSet | None = None
        self._publish(None, self._current)

    def snapshot(self) -> VariantSet:
        """The set for the next batch, with the staged change applied."""
        with self._lock:
            staged, self._staged = self._staged, None
        if staged is not None:
            previous, self._current = self._current, staged
            self._publish(previous, staged)
        return self._current

    @property
    def latest(self) -> VariantSet:
        """The set the next batch will use (the staged one, if any)."""
        with self._lock:
            return self._staged or self._current

    def stage(
        self,
        weights: Mapping[str, float],
        shadows: Mapping[str, float],
        models: Mapping[str, Model],
    ) -> None:
        """Serve with these weights, enabled shadows and models from the next batch on.

        `models` replaces the models of the variants it names; the caller has checked them
        (`models.check_compatible`). ValueError for weights the router cannot use."""
        router = Router(weights)
        with self._lock:
            base = self._staged or self._current
            self._staged = VariantSet(router, {**base.models, **models}, dict(shadows))

    def _publish(self, previous: VariantSet | None, current: VariantSet) -> None:
        gauges = self._metrics
        for name in self._served:
            gauges.variant_weight.labels(name).set(current.router.weights.get(name, 0.0))
        for name, model in current.models.items():
            old = previous.models[name] if previous is not None else None
            if old is not None and (old.version, old.sha256) != (model.version, model.sha256):
                with contextlib.suppress(KeyError):
                    gauges.model_info.remove(name, old.version, old.sha256)
            gauges.model_info.labels(name, model.version, model.sha256).set(1)
