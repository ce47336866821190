"""Score a batch: route rows to variants, one vectorised ONNX call per variant.

A model that raises on a batch is bisected to find the rows that make it fail: those rows
are reported (served rows become `inference_failed` dead letters, shadow rows are counted)
and every other row is still scored. Shadows run beside the served variants on a worker
thread (onnxruntime releases the GIL), within a time budget per batch.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from streamer.models import Model, first_line
from streamer.records import output_record
from streamer.routing import sample
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
    shadow_skipped: dict[str, int] = field(default_factory=dict)
    """Shadow variant -> rows left unscored because the shadow budget ran out."""


_Job = tuple[str, np.ndarray]
"""(shadow variant, rows it scores)."""


class _ShadowBatch:
    """One batch's shadow work on the worker thread; what finished before the deadline."""

    def __init__(self, jobs: list[_Job]) -> None:
        self.jobs = jobs
        self.run_options = ort.RunOptions()
        self.results: list[VariantScores] = []
        self.failures: dict[str, int] = {}
        self.finished: set[str] = set()
        self.cut_off = False
        self.lock = threading.Lock()

    def cut(self) -> None:
        """The budget ran out: keep what finished, stop the ONNX call in progress."""
        with self.lock:
            self.cut_off = True
        self.run_options.terminate = True

    def skipped(self) -> dict[str, int]:
        with self.lock:
            return {name: len(rows) for name, rows in self.jobs if name not in self.finished}


class ShadowRunner:
    """Scores shadow variants on a worker thread while the served variants are scored, so
    served outputs never wait for shadows longer than `budget_s` (None: no limit).

    What a shadow has not finished by the deadline is skipped and counted; its ONNX call is
    stopped (onnxruntime's RunOptions.terminate). While a cut-off call is still unwinding,
    the next batches' shadows are skipped instead of queueing behind it.
    """

    def __init__(self, budget_s: float | None) -> None:
        self.budget_s = budget_s
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="shadow")
        self._running: Future[None] | None = None

    def start(
        self, variants: VariantSet, features: np.ndarray, ids: Sequence[str]
    ) -> tuple[_ShadowBatch, float]:
        """Begin scoring the batch's shadows; returns the work and its deadline."""
        jobs: list[_Job] = []
        for name, rate in variants.shadows.items():
            rows = np.arange(len(ids)) if rate >= 1.0 else sample(ids, name, rate)
            if len(rows):
                jobs.append((name, rows))
        batch = _ShadowBatch(jobs)
        deadline = time.monotonic() + (self.budget_s if self.budget_s is not None else math.inf)
        if not jobs:
            return batch, deadline
        if self._running is not None and not self._running.done():
            batch.cut()  # the last cut-off call is still unwinding: skip, do not queue
            return batch, deadline
        self._running = self._pool.submit(_score_shadows, batch, variants, features, len(ids))
        return batch, deadline

    def finish(self, batch: _ShadowBatch, deadline: float) -> None:
        """Wait for the batch's shadows until `deadline`, then cut off what is left."""
        if self._running is not None and not batch.cut_off and batch.jobs:
            timeout = None if math.isinf(deadline) else max(deadline - time.monotonic(), 0.0)
            try:
                self._running.result(timeout)
            except FutureTimeout:
                batch.cut()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _score_shadows(batch: _ShadowBatch, variants: VariantSet, features: np.ndarray, n: int) -> None:
    for name, rows in batch.jobs:
        model = variants.models[name]
        started = time.perf_counter()
        try:
            good, outputs, finite, failures = _score_rows(
                model, features, rows, n, batch.run_options
            )
        except Exception:  # cut off: terminate makes the call in progress raise
            if batch.run_options.terminate:
                return
            raise
        scored = VariantScores(
            name, model.version, True, good, outputs, 1.0, time.perf_counter() - started, finite
        )
        with batch.lock:
            if batch.cut_off:
                return
            batch.finished.add(name)
            if failures:
                batch.failures[name] = len(failures)
            if len(good):
                batch.results.append(scored)


def score(
    variants: VariantSet, features: np.ndarray, ids: Sequence[str], shadows: ShadowRunner
) -> Scores:
    """Served variants split the rows by the router's weights; each enabled shadow scores
    its sample of the rows, on `shadows`' worker, within its budget."""
    pending, deadline = shadows.start(variants, features, ids)
    routes = variants.router.route(ids)
    results: list[VariantScores] = []
    failed: dict[int, str] = {}
    for name, rows in routes.served.items():
        if len(rows) == 0:
            continue
        model = variants.models[name]
        started = time.perf_counter()
        good, outputs, finite, failures = _score_rows(model, features, rows, len(ids))
        seconds = time.perf_counter() - started
        failed.update((row, f"variant {name}: {why}") for row, why in failures)
        if len(good):
            propensity = routes.propensity[name]
            results.append(
                VariantScores(
                    name, model.version, False, good, outputs, propensity, seconds, finite
                )
            )
    shadows.finish(pending, deadline)
    with pending.lock:
        results += pending.results
        shadow_failures = dict(pending.failures)
    return Scores(results, failed, shadow_failures, pending.skipped())


_Scored = tuple[np.ndarray, dict[str, list[Any]], np.ndarray, list[tuple[int, str]]]


def _score_rows(
    model: Model,
    features: np.ndarray,
    rows: np.ndarray,
    n: int,
    run_options: ort.RunOptions | None = None,
) -> _Scored:
    """Score `rows`; on failure split them in halves until the failing rows are isolated."""
    try:
        outputs, finite = _run(model, features if len(rows) == n else features[rows], run_options)
        return rows, outputs, finite, []
    except Exception as exc:  # onnxruntime raises many types for bad inputs at run time
        if run_options is not None and run_options.terminate:
            raise  # cut off, not a failing row
        if len(rows) == 1:
            return rows[:0], {}, np.ones(0, dtype=bool), [(int(rows[0]), first_line(exc))]
    half = len(rows) // 2
    left = _score_rows(model, features, rows[:half], n, run_options)
    right = _score_rows(model, features, rows[half:], n, run_options)
    names = left[1].keys() | right[1].keys()
    outputs = {k: left[1].get(k, []) + right[1].get(k, []) for k in names}
    return (
        np.concatenate([left[0], right[0]]),
        outputs,
        np.concatenate([left[2], right[2]]),
        left[3] + right[3],
    )


def _run(
    model: Model, features: np.ndarray, run_options: ort.RunOptions | None
) -> tuple[dict[str, list[Any]], np.ndarray]:
    n = len(features)
    raw = model.predict(features, run_options)
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
