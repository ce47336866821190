"""Router: weighted, sticky, exhaustive splits; Scorer: served + shadow scoring of a batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from streamer.demo.data import FEATURES, feature_matrix, generate_transactions
from streamer.inference import Scorer, VariantScores
from streamer.models import Model, load_model, session_options
from streamer.routing import Router
from tests.onnx_models import write_tiny_model

IDS = [f"tx-{i:09d}" for i in range(20_000)]


def served_sets(router: Router, ids: list[str]) -> dict[str, set[str]]:
    routes = router.route(ids)
    return {name: {ids[int(r)] for r in rows} for name, rows in routes.served.items()}


def test_single_variant_gets_everything() -> None:
    router = Router({"champion": 0.3})
    routes = router.route(IDS[:1000])
    assert list(routes.served) == ["champion"]
    np.testing.assert_array_equal(routes.served["champion"], np.arange(1000))
    assert routes.propensity == {"champion": 1.0}
    assert router.weights == {"champion": 1.0}


def test_empty_batch() -> None:
    routes = Router({"a": 0.5, "b": 0.5}).route([])
    assert all(len(rows) == 0 for rows in routes.served.values())
    assert set(routes.served) == {"a", "b"}


def test_split_follows_weights() -> None:
    routes = Router({"champion": 0.9, "challenger": 0.1}).route(IDS)
    share = {name: len(rows) / len(IDS) for name, rows in routes.served.items()}
    assert share["champion"] == pytest.approx(0.9, abs=0.02)
    assert share["challenger"] == pytest.approx(0.1, abs=0.02)
    assert routes.propensity == pytest.approx({"champion": 0.9, "challenger": 0.1})


def test_three_way_split() -> None:
    routes = Router({"a": 0.5, "b": 0.3, "c": 0.2}).route(IDS)
    share = {name: len(rows) / len(IDS) for name, rows in routes.served.items()}
    assert share == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.2}, abs=0.02)


def test_zero_weight_variant_gets_nothing() -> None:
    routes = Router({"a": 1.0, "b": 0.0}).route(IDS[:5000])
    assert len(routes.served["a"]) == 5000
    assert len(routes.served["b"]) == 0
    assert routes.propensity == {"a": 1.0, "b": 0.0}


def test_sticky_per_id() -> None:
    router = Router({"champion": 0.5, "challenger": 0.5})
    first = served_sets(router, IDS[:4000])
    # Same ids again, in another order, in other batches, and through a fresh router.
    shuffled = list(reversed(IDS[:4000]))
    again = served_sets(Router({"champion": 0.5, "challenger": 0.5}), shuffled)
    assert first == again
    for chunk_start in range(0, 4000, 333):
        chunk = IDS[:4000][chunk_start : chunk_start + 333]
        for name, ids in served_sets(router, chunk).items():
            assert ids <= first[name]
    # A duplicated id within one batch lands on the same variant both times.
    dup = served_sets(router, [IDS[0], IDS[0]])
    assert sum(1 for ids in dup.values() if IDS[0] in ids) == 1


def test_weights_normalised() -> None:
    router = Router({"a": 3.0, "b": 1.0})
    assert router.weights == pytest.approx({"a": 0.75, "b": 0.25})
    routes = router.route(IDS)
    assert routes.propensity == pytest.approx({"a": 0.75, "b": 0.25})
    assert len(routes.served["a"]) / len(IDS) == pytest.approx(0.75, abs=0.02)
    assert Router({"a": 30, "b": 10}).route(IDS).served["a"].tolist() == (
        routes.served["a"].tolist()
    )


@pytest.mark.parametrize(
    "weights",
    [{"a": 0.9, "b": 0.1}, {"a": 0.2, "b": 0.3, "c": 0.5}, {"a": 1e-9, "b": 1.0}],
)
def test_every_row_served_exactly_once(weights: dict[str, float]) -> None:
    routes = Router(weights).route(IDS)
    rows = np.concatenate(list(routes.served.values()))
    assert sorted(rows.tolist()) == list(range(len(IDS)))
    for r in routes.served.values():
        assert r.tolist() == sorted(r.tolist())  # ascending within a variant


@pytest.mark.parametrize(
    "weights",
    [
        {},
        {"a": 0.0},
        {"a": 0.0, "b": 0.0},
        {"a": -0.1, "b": 1.1},
        {"a": float("nan"), "b": 1.0},
        {"a": float("inf"), "b": 1.0},
    ],
)
def test_invalid_weights_rejected(weights: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="weights"):
        Router(weights)


# --- Scorer with the real demo models --------------------------------------------------------


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


def test_scorer_serves_partition_and_shadows_score_everything(
    models: dict[str, Model], batch: tuple[np.ndarray, list[str]]
) -> None:
    features, ids = batch
    router = Router({"champion": 0.7, "challenger": 0.3})
    results = Scorer(models, router, shadows=["candidate"]).score(features, ids)
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


def test_scorer_outputs_are_python_values_equal_to_onnxruntime(
    models: dict[str, Model],
    batch: tuple[np.ndarray, list[str]],
    demo_models: dict[str, Path],
) -> None:
    features, ids = batch
    stems = {"champion": "fraud_v1", "challenger": "fraud_v2", "candidate": "fraud_v3"}
    router = Router({"champion": 0.5, "challenger": 0.5})
    results = Scorer(models, router, shadows=["candidate"]).score(features, ids)
    for r in results:
        ref = _reference(demo_models[stems[r.variant]], features[r.rows])
        labels = r.outputs["label"]
        probabilities = r.outputs["probabilities"]
        assert all(type(v) is int for v in labels)  # a single value per row: a number
        assert all(type(p) is list and len(p) == 2 for p in probabilities)
        assert all(type(x) is float for p in probabilities for x in p)
        assert labels == ref["label"].reshape(-1).tolist()
        assert probabilities == ref["probabilities"].tolist()


def test_scorer_single_variant_scores_whole_batch_without_copy(
    models: dict[str, Model], batch: tuple[np.ndarray, list[str]]
) -> None:
    features, ids = batch
    results = Scorer(models, Router({"challenger": 1.0}), shadows=[]).score(features, ids)
    (only,) = results
    assert (only.variant, only.shadow, only.propensity) == ("challenger", False, 1.0)
    assert only.rows.tolist() == list(range(len(ids)))


def test_scorer_skips_variants_without_rows(
    models: dict[str, Model], batch: tuple[np.ndarray, list[str]]
) -> None:
    features, ids = batch
    router = Router({"champion": 1.0, "challenger": 0.0})
    results: list[VariantScores] = Scorer(models, router, shadows=["candidate"]).score(
        features[:10], ids[:10]
    )
    assert [(r.variant, r.shadow) for r in results] == [
        ("champion", False),
        ("candidate", True),
    ]


def test_scorer_flags_rows_with_non_finite_outputs(tmp_path: Path) -> None:
    model = load_model(write_tiny_model(tmp_path / "tiny.onnx"), 4)
    scorer = Scorer({"a": model}, Router({"a": 1.0}), [])
    # 3e38 is a finite float32, but the linear model's sums overflow to inf / NaN.
    features = np.array([[1, 2, 3, 4], [3e38, 3e38, 3e38, 3e38]], dtype=np.float32)
    (scores,) = scorer.score(features, ["x", "y"])
    assert scores.finite.tolist() == [True, False]
