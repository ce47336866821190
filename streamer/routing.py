"""Which variant serves each event (weighted, sticky per id), and which events a sampled
shadow scores."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Routes:
    """The routing decision for one batch."""

    served: dict[str, np.ndarray]
    """Variant -> row indices it serves (each row served by exactly one variant)."""
    propensity: dict[str, float]
    """Variant -> probability with which the router chose it (its weight at that moment)."""


class Router:
    """Splits traffic by weight. An id always lands in the same bucket, so a user's events
    stay on one variant while the weights stay the same (A/B tests need that)."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        total = sum(weights.values())
        finite = all(math.isfinite(w) for w in weights.values())
        if not weights or not finite or total <= 0 or any(w < 0 for w in weights.values()):
            raise ValueError(f"weights must be non-negative with a positive sum: {dict(weights)}")
        self.names = list(weights)
        self.weights = {name: w / total for name, w in weights.items()}
        self._edges = np.cumsum([self.weights[n] for n in self.names])
        self._edges[-1] = 1.0  # float round-off must not leave a gap at the top

    def route(self, ids: Sequence[str]) -> Routes:
        """Assign each id (row) to one served variant."""
        if len(self.names) == 1:
            only = self.names[0]
            return Routes({only: np.arange(len(ids))}, {only: 1.0})
        buckets = np.fromiter((_bucket(i) for i in ids), dtype=np.float64, count=len(ids))
        choice = np.searchsorted(self._edges, buckets, side="right")
        served = {name: np.flatnonzero(choice == k) for k, name in enumerate(self.names)}
        return Routes(served, dict(self.weights))


def sample(ids: Sequence[str], salt: str, rate: float) -> np.ndarray:
    """Indices of the ids in a deterministic `rate` sample: the same ids on every agent, and
    a sample of its own for each `salt` (a shadow's name), independent of routing."""
    buckets = np.fromiter(
        (_bucket(f"{salt}\x00{i}") for i in ids), dtype=np.float64, count=len(ids)
    )
    return np.flatnonzero(buckets < rate)


def _bucket(event_id: str) -> float:
    """A uniform number in [0, 1) fixed by the id (blake2b mixes sequential ids well)."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / float(1 << 53)
