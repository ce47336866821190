"""score(): served variants split a batch, shadows score all of it, failures are isolated."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from streamer.demo.data import FEATURES, feature_matrix, generate_transactions
from streamer.inference import ShadowRunner, VariantScores, score
from streamer.models import Model, load_model, session_options
from streamer.routing import Router
from streamer.variants import VariantSet
from tests.onnx_models import write_lookup_model, write_slow_model, write_tiny_model

RUNNER = ShadowRunner(None)
"""Shadows without a time budget: every shadow row is scored."""


@pytest.fixture(scope="module")
def models(demo_models: dict[str, Path]) -> dict[str, Model]:
    return {
        "champion": load_model(demo_models["fraud_v1"], len(FEATURES)),
        "challenger": load_model(demo_models["fraud_v2"], len(FEATURES)),
        "candidate": load_model(demo_models["fraud_v3"], len(FEATURES)),
    }


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, list[str]]:
    events = generate_transactions(600, seed=11)
    return feature_matrix(events), [str(e["id"]) for e in events]


def _reference(path: Path, features: np.ndarray) -> dict[str, np.ndarray]:
    # The same settings the engine uses, so the float32 results must match bit for bit.
    session = ort.InferenceSession(
        str(path), sess_options=session_options(), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"features": features}), strict=True))


def test_score_serves_partition_and_shadows_score_everything(
    models: dict[str, Model], batch: tuple[np.ndarray, list[str]]
) -> None:
    features, ids = batch
    router = Router({"champion": 0.7, "challenger": 0.3})
    results = score(VariantSet(router, models, {"candidate": 1.0}), features, ids, RUNNER).variants
    by_name = {r.variant: r for r in results}
    assert set(by_name) == {"champion", "challenger", "candidate"}

    served = [r for r in results if not r.shadow]
    rows = np.concatenate([r.rows for r in served])
    assert sorted(rows.tolist()) == list(range(len(ids)))
    assert by_name["champion"].propensity == pytest.approx(0.7)
    assert by_name["challenger"].propensity == pytest.approx(0.3)

    shadow = by_name["candidate"]
    assert shadow.shadow is True
    assert shadow.propensity == 1.0
    assert shadow.rows.tolist() == list(range(len(ids)))

    for r in results:
        assert r.version == models[r.variant].version
        assert r.seconds >= 0
        assert set(r.outputs) == {"label", "probabilities"}
        assert all(len(values) == len(r.rows) for values in r.outputs.values())


def test_score_outputs_are_python_values_equal_to_onnxruntime(
    models: dict[str, Model],
    batch: tuple[np.ndarray, list[str]],
    demo_models: dict[str, Path],
) -> None:
    features, ids = batch
    stems = {"champion": "fraud_v1", "challenger": "fraud_v2", "candidate": "fraud_v3"}
    router = Router({"champion": 0.5, "challenger": 0.5})
    results = score(VariantSet(router, models, {"candidate": 1.0}), features, ids, RUNNER).variants
    for r in results:
        ref = _reference(demo_models[stems[r.variant]], features[r.rows])
        labels = r.outputs["label"]
        probabilities = r.outputs["probabilities"]
        assert all(type(v) is int for v in labels)  # a single value per row: a number
        assert all(type(p) is list and len(p) == 2 for p in probabilities)
        assert all(type(x) is float for p in probabilities for x in p)
        assert labels == ref["label"].reshape(-1).tolist()
        assert probabilities == ref["probabilities"].tolist()


def test_score_single_variant_scores_whole_batch_without_copy(
    models: dict[str, Model], batch: tuple[np.ndarray, list[str]]
) -> None:
    features, ids = batch
    results = score(
        VariantSet(Router({"challenger": 1.0}), models, {}), features, ids, RUNNER
    ).variants
    (only,) = results
    assert (only.variant, only.shadow, only.propensity) == ("challenger", False, 1.0)
    assert only.rows.tolist() == list(range(len(ids)))


def test_score_skips_variants_without_rows(
    models: dict[str, Model], batch: tuple[np.ndarray, list[str]]
) -> None:
    features, ids = batch
    router = Router({"champion": 1.0, "challenger": 0.0})
    results: list[VariantScores] = score(
        VariantSet(router, models, {"candidate": 1.0}), features[:10], ids[:10], RUNNER
    ).variants
    assert [(r.variant, r.shadow) for r in results] == [
        ("champion", False),
        ("candidate", True),
    ]


def test_score_flags_rows_with_non_finite_outputs(tmp_path: Path) -> None:
    model = load_model(write_tiny_model(tmp_path / "tiny.onnx"), 4)
    variants = VariantSet(Router({"a": 1.0}), {"a": model}, {})
    # 3e38 is a finite float32, but the linear model's sums overflow to inf / NaN.
    features = np.array([[1, 2, 3, 4], [3e38, 3e38, 3e38, 3e38]], dtype=np.float32)
    (scores,) = score(variants, features, ["x", "y"], RUNNER).variants
    assert scores.finite.tolist() == [True, False]


def _lookup(tmp_path: Path) -> Model:
    return load_model(write_lookup_model(tmp_path / "lookup.onnx"), 4)


def _rows(first: list[float]) -> np.ndarray:
    return np.array([[v, 0, 0, 0] for v in first], dtype=np.float32)


def test_a_served_model_failing_on_some_rows_is_bisected_to_those_rows(tmp_path: Path) -> None:
    model = _lookup(tmp_path)
    features = _rows([1, 2, 50, 3, 4, 99, 5, 6])
    result = score(
        VariantSet(Router({"a": 1.0}), {"a": model}, {}), features, list("abcdefgh"), RUNNER
    )
    assert sorted(result.failed) == [2, 5]
    assert all("variant a:" in why and "Gather" in why for why in result.failed.values())
    (scores,) = result.variants
    assert scores.rows.tolist() == [0, 1, 3, 4, 6, 7]
    good = features[[0, 1, 3, 4, 6, 7]]
    assert scores.outputs["probabilities"] == model.predict(good)["probabilities"].tolist()
    assert result.shadow_failures == {}


def test_a_model_failing_on_every_row_fails_every_row(tmp_path: Path) -> None:
    result = score(
        VariantSet(Router({"a": 1.0}), {"a": _lookup(tmp_path)}, {}),
        _rows([50, 60, 70]),
        ["x", "y", "z"],
        RUNNER,
    )
    assert sorted(result.failed) == [0, 1, 2]
    assert result.variants == []


def test_a_failing_shadow_is_counted_and_never_touches_served_rows(
    tmp_path: Path, models: dict[str, Model]
) -> None:
    variants = VariantSet(
        Router({"champion": 1.0}),
        {"champion": models["champion"], "bad": _lookup(tmp_path)},
        {"bad": 1.0},
    )
    result = score(variants, _rows([1, 50, 2, 3]), ["a", "b", "c", "d"], RUNNER)
    assert result.failed == {}
    assert result.shadow_failures == {"bad": 1}
    served = [s for s in result.variants if not s.shadow]
    assert [s.rows.tolist() for s in served] == [[0, 1, 2, 3]]
    (shadow,) = [s for s in result.variants if s.shadow]
    assert shadow.rows.tolist() == [0, 2, 3]


def test_a_sampled_shadow_scores_the_same_ids_whatever_the_batch(
    models: dict[str, Model], batch: tuple[np.ndarray, list[str]]
) -> None:
    features, ids = batch
    variants = VariantSet(Router({"champion": 1.0}), models, {"candidate": 0.25})
    (shadow,) = [s for s in score(variants, features, ids, RUNNER).variants if s.shadow]
    sampled = {ids[i] for i in shadow.rows.tolist()}
    assert 0.18 * len(ids) < len(sampled) < 0.32 * len(ids)
    # Another agent sees the same ids in other batches, in another order: the same sample.
    half = list(reversed(ids[::2]))
    rows = np.array([ids.index(i) for i in half])
    (again,) = [s for s in score(variants, features[rows], half, RUNNER).variants if s.shadow]
    assert {half[i] for i in again.rows.tolist()} == sampled & set(half)


def test_a_shadow_over_its_budget_is_cut_off_and_served_rows_do_not_wait(
    tmp_path: Path, models: dict[str, Model], batch: tuple[np.ndarray, list[str]]
) -> None:
    features, ids = batch
    slow = load_model(write_slow_model(tmp_path / "slow.onnx", layers=96), 4)
    started = time.perf_counter()
    slow.predict(features)
    alone = time.perf_counter() - started
    variants = VariantSet(
        Router({"champion": 1.0}), {"champion": models["champion"], "slow": slow}, {"slow": 1.0}
    )
    runner = ShadowRunner(0.02)
    started = time.perf_counter()
    result = score(variants, features, ids, runner)
    took = time.perf_counter() - started
    assert [s.variant for s in result.variants] == ["champion"]
    assert result.shadow_skipped == {"slow": len(ids)}
    assert took < alone / 2, f"served rows waited {took:.3f}s for a {alone:.3f}s shadow"
    # The next batch does not queue behind a cut-off call, and a fast shadow still fits.
    fast = VariantSet(Router({"champion": 1.0}), models, {"candidate": 1.0})
    deadline = time.monotonic() + alone * 4
    while time.monotonic() < deadline:
        later = score(fast, features, ids, runner)
        if not later.shadow_skipped:
            break
        time.sleep(0.01)
    assert later.shadow_skipped == {}
    assert [s.variant for s in later.variants] == ["champion", "candidate"]
    runner.close()
