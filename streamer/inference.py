"""Score a batch: route rows to variants, one vectorised ONNX call per variant.

A model that raises on a batch is bisected to find the rows that make it fail: those rows
are reported (served rows become `inference_failed` dead letters, shadow rows are counted)
and every other row is still scored.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.models import Model, first_line
from streamer.records import output_record
from streamer.variants import VariantSet


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


@dataclass(frozen=True)
class Scores:
    """Every variant's predictions for one batch, and the rows a model failed on."""

    variants: list[VariantScores]
    failed: dict[int, str] = field(default_factory=dict)
    """Served row -> why its variant's model could not score it."""
    shadow_failures: dict[str, int] = field(default_factory=dict)
    """Shadow variant -> rows it could not score."""


def score(variants: VariantSet, features: np.ndarray, ids: Sequence[str]) -> Scores:
    """Served variants split the rows by the router's weights; shadows score every row."""
    routes = variants.router.route(ids)
    every_row = np.arange(len(ids))
    plan = [(name, rows, False, routes.propensity[name]) for name, rows in routes.served.items()]
    plan += [(name, every_row, True, 1.0) for name in variants.shadows]
    results: list[VariantScores] = []
    failed: dict[int, str] = {}
    shadow_failures: dict[str, int] = {}
    for name, rows, shadow, propensity in plan:
        if len(rows) == 0:
            continue
        model = variants.models[name]
        started = time.perf_counter()
        good, outputs, finite, failures = _score_rows(model, features, rows, len(ids))
        seconds = time.perf_counter() - started
        if failures:
            if shadow:
                shadow_failures[name] = len(failures)
            else:
                failed.update((row, f"variant {name}: {why}") for row, why in failures)
        if len(good):
            results.append(
                VariantScores(
                    name, model.version, shadow, good, outputs, propensity, seconds, finite
                )
            )
    return Scores(results, failed, shadow_failures)


_Scored = tuple[np.ndarray, dict[str, list[Any]], np.ndarray, list[tuple[int, str]]]


def _score_rows(model: Model, features: np.ndarray, rows: np.ndarray, n: int) -> _Scored:
    """Score `rows`; on failure split them in halves until the failing rows are isolated."""
    try:
        outputs, finite = _run(model, features if len(rows) == n else features[rows])
        return rows, outputs, finite, []
    except Exception as exc:  # onnxruntime raises many types for bad inputs at run time
        if len(rows) == 1:
            return rows[:0], {}, np.ones(0, dtype=bool), [(int(rows[0]), first_line(exc))]
    half = len(rows) // 2
    left = _score_rows(model, features, rows[:half], n)
    right = _score_rows(model, features, rows[half:], n)
    names = left[1].keys() | right[1].keys()
    outputs = {k: left[1].get(k, []) + right[1].get(k, []) for k in names}
    return (
        np.concatenate([left[0], right[0]]),
        outputs,
        np.concatenate([left[2], right[2]]),
        left[3] + right[3],
    )


def _run(model: Model, features: np.ndarray) -> tuple[dict[str, list[Any]], np.ndarray]:
    n = len(features)
    raw = model.predict(features)
    for name, value in raw.items():
        if value.ndim == 0 or value.shape[0] != n:
            raise ValueError(f"output {name!r} has shape {value.shape} for {n} rows")
    finite = np.ones(n, dtype=bool)
    for value in raw.values():
        if value.dtype.kind in "fc":
            finite &= np.isfinite(value.reshape(n, -1)).all(axis=1)
    return {name: _per_row(value, n) for name, value in raw.items()}, finite


def _per_row(value: np.ndarray, n: int) -> list[Any]:
    """(n,) or (n, 1) -> numbers; (n, k...) -> lists. tolist() yields plain Python types."""
    flat = value.reshape(n, -1)
    return flat[:, 0].tolist() if flat.shape[1] == 1 else flat.tolist()
