"""Score a batch: route rows to variants, one vectorised ONNX call per variant."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamer.models import Model
from streamer.routing import Router
from streamer.sinks import output_record


@dataclass(frozen=True)
class VariantScores:
    """One variant's predictions for the rows it scored."""

    variant: str
    version: str
    shadow: bool
    rows: np.ndarray
    """Indices into the batch's feature matrix, ascending."""
    outputs: dict[str, list[Any]]
    """ONNX output name -> one JSON-ready value per row (a number, or a list)."""
    propensity: float
    seconds: float
    finite: np.ndarray
    """Per row: True when every float output is finite (NaN/inf rows are not served)."""

    def record(self, j: int, event_id: str, ts_event: int, ts_predicted: int) -> dict[str, Any]:
        """The output record of this variant's j-th row."""
        return output_record(
            event_id=event_id,
            variant=self.variant,
            version=self.version,
            outputs={name: values[j] for name, values in self.outputs.items()},
            ts_event=ts_event,
            ts_predicted=ts_predicted,
        )


class Scorer:
    """Served variants split the rows by the router's weights; shadows score every row."""

    def __init__(self, models: Mapping[str, Model], router: Router, shadows: Sequence[str]):
        self.models = dict(models)
        self.router = router
        self.shadows = list(shadows)

    def score(self, features: np.ndarray, ids: Sequence[str]) -> list[VariantScores]:
        routes = self.router.route(ids)
        every_row = np.arange(len(ids))
        plan = [
            (name, rows, False, routes.propensity[name]) for name, rows in routes.served.items()
        ]
        plan += [(name, every_row, True, 1.0) for name in self.shadows]
        results = []
        for name, rows, shadow, propensity in plan:
            if len(rows) == 0:
                continue
            model = self.models[name]
            started = time.perf_counter()
            raw = model.predict(features if len(rows) == len(ids) else features[rows])
            seconds = time.perf_counter() - started
            outputs = {out: _per_row(value, len(rows)) for out, value in raw.items()}
            results.append(
                VariantScores(
                    name,
                    model.version,
                    shadow,
                    rows,
                    outputs,
                    propensity,
                    seconds,
                    _finite_rows(raw.values(), len(rows)),
                )
            )
        return results


def _finite_rows(values: Iterable[np.ndarray], n: int) -> np.ndarray:
    finite = np.ones(n, dtype=bool)
    for value in values:
        if value.dtype.kind in "fc":
            finite &= np.isfinite(value.reshape(n, -1)).all(axis=1)
    return finite


def _per_row(value: np.ndarray, n: int) -> list[Any]:
    """(n,) or (n, 1) -> numbers; (n, k...) -> lists. tolist() yields plain Python types."""
    flat = value.reshape(n, -1)
    return flat[:, 0].tolist() if flat.shape[1] == 1 else flat.tolist()
