"""Drift: the PSI and mean-shift math, the sliding window, profile files, the agent's gauges
and `streamer validate` of `drift.profile`."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
import pytest
import yaml
from typer.testing import CliRunner

from streamer.cli import app
from streamer.config import Topology, load_topology
from streamer.demo.data import FEATURES, feature_matrix, generate_transactions
from streamer.drift import (
    EPSILON,
    Drift,
    PredictionReference,
    Profile,
    ProfileError,
    Reference,
    SlidingCounts,
    bin_index,
    bin_shares,
    build_profile,
    check_profile,
    load_profile,
    main_output,
    main_values,
    main_values_of_rows,
    mean_shift,
    psi,
    quantile_edges,
    write_profile,
)
from streamer.errors import StreamerError
from streamer.inference import ShadowRunner, VariantScores, _per_row, score
from streamer.metrics import Metrics
from streamer.models import Model, load_model
from streamer.routing import Router
from streamer.variants import VariantSet
from tests.onnx_models import OnnxFactory, write_lookup_model

RUNNER = ShadowRunner(None)

# -- the math --------------------------------------------------------------------------------


def test_psi_of_known_shares() -> None:
    # (0.25 - 0.5) ln(0.5) + (0.75 - 0.5) ln(1.5)
    assert psi(np.array([0.25, 0.75]), np.array([0.5, 0.5])) == pytest.approx(
        0.25 * np.log(2) + 0.25 * np.log(1.5)
    )
    assert psi(np.full(10, 0.1), np.full(10, 0.1)) == 0.0
    # Symmetric in its arguments, and zero only for equal shares.
    a, b = np.array([0.1, 0.2, 0.7]), np.array([0.3, 0.3, 0.4])
    assert psi(a, b) == pytest.approx(psi(b, a))
    assert psi(a, b) > 0


def test_psi_of_an_empty_bin_is_finite_by_epsilon() -> None:
    value = psi(np.array([0.0, 1.0]), np.array([0.5, 0.5]))
    expected = (EPSILON - 0.5) * np.log(EPSILON / 0.5) + 0.5 * np.log(2.0)
    assert value == pytest.approx(expected)
    assert np.isfinite(value)
    # Bins empty on both sides count nothing (a feature with fewer bins than another).
    assert psi(np.array([0.5, 0.5, 0.0]), np.array([0.5, 0.5, 0.0])) == 0.0


def test_psi_of_a_matrix_is_one_per_row() -> None:
    live = np.array([[0.25, 0.75], [0.5, 0.5]])
    ref = np.array([[0.5, 0.5], [0.5, 0.5]])
    result = psi(live, ref)
    assert isinstance(result, np.ndarray)
    assert result.tolist() == pytest.approx([psi(live[0], ref[0]), 0.0])


def test_quantile_edges_are_deciles_and_merge_ties() -> None:
    sample = np.arange(1000, dtype=np.float64)
    edges = quantile_edges(sample, 10)
    assert len(edges) == 9
    np.testing.assert_allclose(edges, np.quantile(sample, np.arange(1, 10) / 10))
    shares = bin_shares(sample, edges)
    assert len(shares) == 10 and shares == pytest.approx(np.full(10, 0.1), abs=0.002)
    # A feature with three values: tied quantiles merge, leaving fewer bins.
    hours = np.array([3.0] * 500 + [4.0] * 300 + [5.0] * 200)
    edges = quantile_edges(hours, 10)
    assert edges.tolist() == sorted(set(edges.tolist()))
    assert len(edges) < 9
    assert bin_shares(hours, edges).sum() == pytest.approx(1.0)


def test_bins_are_closed_below_with_infinite_ends() -> None:
    edges = np.array([1.0, 2.0])
    index = bin_index(np.array([-np.inf, 0.5, 1.0, 1.5, 2.0, 1e30]), edges)
    assert index.tolist() == [0, 0, 1, 1, 2, 2]


def test_a_shift_of_one_std_crosses_the_threshold_and_the_same_distribution_does_not() -> None:
    rng = np.random.default_rng(1)
    ref = Reference.of(rng.normal(10.0, 2.0, 20_000), 10)
    same = rng.normal(10.0, 2.0, 10_000)
    shifted = rng.normal(12.0, 2.0, 10_000)  # +1 std
    assert psi(bin_shares(same, ref.edges), ref.shares) < 0.1
    assert psi(bin_shares(shifted, ref.edges), ref.shares) > 0.2
    shifts = mean_shift(np.array([same.mean(), shifted.mean()]), ref.mean, ref.std)
    assert shifts.tolist() == pytest.approx([0.0, 1.0], abs=0.05)
    # Heavy-tailed too (the demo's amounts are log-normal): x5 is far over the threshold.
    amounts = rng.lognormal(np.log(40.0), 1.1, 20_000)
    ref = Reference.of(amounts, 10)
    fresh = rng.lognormal(np.log(40.0), 1.1, 10_000)
    assert psi(bin_shares(fresh, ref.edges), ref.shares) < 0.1
    assert psi(bin_shares(fresh * 5, ref.edges), ref.shares) > 0.2


def test_mean_shift_of_a_constant_reference() -> None:
    shifts = mean_shift(np.array([3.0, 4.0, 2.0]), np.array([3.0, 3.0, 3.0]), np.zeros(3))
    assert shifts.tolist() == [0.0, np.inf, -np.inf]


# -- the main output -------------------------------------------------------------------------


def test_main_values_rules() -> None:
    assert main_values(np.array([1.0, 2.0])).tolist() == [1.0, 2.0]
    assert main_values(np.array([[1.0], [2.0]])).tolist() == [1.0, 2.0]
    assert main_values(np.array([[0.9, 0.1], [0.2, 0.8]])).tolist() == [0.1, 0.8]
    assert main_values(np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])).tolist() == [0.5, 0.6]
    assert main_values(np.empty((0, 3))).tolist() == []


@pytest.mark.parametrize(
    "value",
    [
        np.array([1, 0, 1], dtype=np.int64),
        np.array([[0.5], [0.25], [1.0]], dtype=np.float32),
        np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], dtype=np.float32),
        np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32),
    ],
)
def test_main_values_of_published_rows_match_the_array(value: np.ndarray) -> None:
    """What the agent reads (the JSON-ready rows) gives what the profile read (the array)."""
    rows = _per_row(value, len(value))
    np.testing.assert_array_equal(main_values_of_rows(rows), main_values(value))


def test_main_output_is_the_first_float_output(tmp_path: Path, tiny_model: OnnxFactory) -> None:
    both = load_model(tiny_model(tmp_path / "a.onnx"), 4)
    assert both.output_names == ("label", "probabilities")
    assert main_output(both) == "probabilities"
    labels = load_model(tiny_model(tmp_path / "b.onnx"), 4, outputs=["label"])
    assert main_output(labels) == "label"  # no float output: the first one


# -- the sliding window -----------------------------------------------------------------------


def _fill(window: SlidingCounts, batches: list[np.ndarray], bins: int) -> None:
    for values in batches:
        window.add(np.bincount(values, minlength=bins), np.array([values.sum()]), len(values))


def test_the_window_holds_the_newest_events_in_steps() -> None:
    rng = np.random.default_rng(2)
    bins, size = 5, 1000
    window = SlidingCounts(size, bins, 1)
    batches = [rng.integers(0, bins, int(rng.integers(1, 200))) for _ in range(300)]
    seen: list[np.ndarray] = []
    for values in batches:
        _fill(window, [values], bins)
        seen.append(values)
        events = np.concatenate(seen)
        # At least `size` once that many arrived; over it by less than its oldest step,
        # which holds less than a step and a batch.
        assert min(size, len(events)) <= window.n < size + window.step + 200
        newest = events[len(events) - window.n :]
        assert window.counts().tolist() == np.bincount(newest, minlength=bins).tolist()
        assert window.sums()[0] == pytest.approx(newest.sum())


def test_a_batch_larger_than_the_window_is_the_window() -> None:
    window = SlidingCounts(100, 2, 1)
    _fill(window, [np.zeros(50, dtype=np.intp), np.ones(500, dtype=np.intp)], 2)
    assert window.n == 500
    assert window.counts().tolist() == [0, 500]


def test_a_huge_value_leaves_no_residue_once_it_left() -> None:
    window = SlidingCounts(64, 1, 1)
    window.add(np.array([1]), np.array([3.0e38]), 1)
    for _ in range(200):
        window.add(np.array([1]), np.array([0.1]), 1)
    assert window.sums()[0] == pytest.approx(0.1 * window.n)


# -- profile files ---------------------------------------------------------------------------


def _topology(tmp_path: Path, model: Path, **drift: Any) -> Topology:
    spec = {
        "name": "fraud",
        "input": {"topic": "tx", "format": "json"},
        "features": list(FEATURES),
        "variants": [
            {"name": "champion", "model": str(model), "weight": 0.5},
            {"name": "challenger", "model": str(model), "weight": 0.5},
            {"name": "candidate", "model": str(model), "shadow": True},
        ],
        "output": {"topic": "scores"},
        "lake": {"topic": "lake"},
        "dead_letter": {"topic": "tx-dlq"},
        "metrics": {"port": None},
    }
    if drift:
        spec["drift"] = drift
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_topology(path)


@pytest.fixture(scope="module")
def demo_model(demo_models: dict[str, Path]) -> Model:
    return load_model(demo_models["fraud_v2"], len(FEATURES))


@pytest.fixture(scope="module")
def reference_rows() -> np.ndarray:
    return feature_matrix(generate_transactions(5000, seed=21))


def _profile(tmp_path: Path, model: Model, rows: np.ndarray) -> tuple[Topology, Profile]:
    topology = _topology(tmp_path, model.path)
    models = {"champion": model, "challenger": model, "candidate": model}
    return topology, build_profile(topology, models, rows, 10, source="tx")


def test_a_profile_describes_features_and_served_predictions(
    tmp_path: Path, demo_model: Model, reference_rows: np.ndarray
) -> None:
    _, profile = _profile(tmp_path, demo_model, reference_rows)
    assert list(profile.features) == list(FEATURES)
    assert set(profile.predictions) == {"champion", "challenger"}  # served only
    assert profile.events == 5000 and profile.source == "tx"
    amount = profile.features["amount"]
    assert len(amount.edges) == 9 and amount.shares == pytest.approx(np.full(10, 0.1), abs=0.01)
    assert amount.mean == pytest.approx(float(reference_rows[:, 0].mean()), rel=1e-6)
    pred = profile.predictions["champion"]
    assert pred.output == "probabilities" and pred.version == "fraud_v2"
    scores = demo_model.predict(reference_rows)["probabilities"][:, 1]
    assert pred.mean == pytest.approx(float(scores.mean()), rel=1e-5)


def test_a_model_that_fails_on_the_profiled_events_is_one_line(
    tmp_path: Path, reference_rows: np.ndarray
) -> None:
    path = write_lookup_model(tmp_path / "lookup.onnx")  # raises for amounts of 10 or more
    model = load_model(path, len(FEATURES))
    topology = _topology(tmp_path, path)
    models = {"champion": model, "challenger": model}
    with pytest.raises(StreamerError, match=r"lookup.onnx: scoring the profiled events raised: "):
        build_profile(topology, models, reference_rows, 10)


def test_a_profile_file_round_trips(
    tmp_path: Path, demo_model: Model, reference_rows: np.ndarray
) -> None:
    _, profile = _profile(tmp_path, demo_model, reference_rows)
    path = tmp_path / "deep" / "profile.json"
    write_profile(profile, path)
    assert [p.name for p in path.parent.iterdir()] == ["profile.json"]  # no temporary left
    loaded = load_profile(path)
    assert loaded.to_json() == profile.to_json()
    for name, ref in profile.features.items():
        np.testing.assert_array_equal(loaded.features[name].edges, ref.edges)
        np.testing.assert_array_equal(loaded.features[name].shares, ref.shares)
    assert isinstance(loaded.predictions["champion"], PredictionReference)
    raw = json.loads(path.read_text())
    assert (
        raw["format"] == 1
        and raw["features"]["amount"]["edges"] == profile.features["amount"].edges.tolist()
    )


def _good_json(tmp_path: Path, model: Model, rows: np.ndarray) -> dict[str, Any]:
    _, profile = _profile(tmp_path, model, rows)
    return profile.to_json()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda raw: b"{not json", "not JSON"),
        (lambda raw: orjson.dumps([1, 2]), "must be a JSON object"),
        (lambda raw: orjson.dumps({**raw, "format": 7}), "format 7 is not 1"),
        (lambda raw: orjson.dumps({**raw, "features": {}}), "features: must be an object"),
        (
            lambda raw: orjson.dumps(
                {**raw, "features": {**raw["features"], "hour": {"edges": [2, 1], "shares": []}}}
            ),
            "features.hour.edges: must be strictly ascending",
        ),
        (
            lambda raw: orjson.dumps(
                {
                    **raw,
                    "features": {
                        **raw["features"],
                        "hour": {**raw["features"]["hour"], "shares": [0.5, 0.5]},
                    },
                }
            ),
            "features.hour.shares:",
        ),
        (
            lambda raw: orjson.dumps(
                {
                    **raw,
                    "predictions": {
                        "champion": {**raw["predictions"]["champion"], "std": -1.0},
                    },
                }
            ),
            "predictions.champion.std: must be a finite number >= 0",
        ),
    ],
)
def test_an_invalid_profile_file_is_one_line_naming_it(
    tmp_path: Path,
    demo_model: Model,
    reference_rows: np.ndarray,
    breakage: Any,
    message: str,
) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(breakage(_good_json(tmp_path, demo_model, reference_rows)))
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_a_missing_profile_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"file not found \(write one with `streamer profile"):
        load_profile(tmp_path / "nope.json")


def test_check_profile_against_the_topology(
    tmp_path: Path, demo_model: Model, reference_rows: np.ndarray
) -> None:
    topology, profile = _profile(tmp_path, demo_model, reference_rows)
    models = {"champion": demo_model, "challenger": demo_model}
    assert check_profile(profile, topology, models) == ([], [])
    del profile.features["hour"]
    del profile.predictions["challenger"]
    problems, warnings = check_profile(profile, topology, models)
    assert problems == [
        "has no reference for feature(s) hour (it describes amount, age_days, merchant_risk); "
        "run `streamer profile` again"
    ]
    assert warnings == [
        "has no reference for variant challenger: "
        "streamer_prediction_drift_psi is not exported for it"
    ]
    profile.predictions["champion"] = replace(profile.predictions["champion"], version="old")
    _, warnings = check_profile(profile, topology, models)
    assert warnings[0].startswith(
        "variant champion's reference was scored by version old, version fraud_v2 serves"
    )
    profile.predictions["champion"] = replace(profile.predictions["champion"], output="nope")
    problems, _ = check_profile(profile, topology, models)
    assert problems[-1] == (
        "predictions.champion.output: 'nope' is not an output of champion "
        "(has label, probabilities)"
    )


# -- the agent's gauges ----------------------------------------------------------------------


def _drift(
    tmp_path: Path, model: Model, rows: np.ndarray, **spec: Any
) -> tuple[Drift, Metrics, VariantSet]:
    _, profile = _profile(tmp_path, model, rows)
    path = tmp_path / "profile.json"
    write_profile(profile, path)
    topology = _topology(tmp_path, model.path, profile=str(path), **spec)
    metrics = Metrics()
    models = {"champion": model, "challenger": model, "candidate": model}
    drift = Drift.for_topology(topology, models, metrics)
    assert drift is not None
    variants = VariantSet(Router({"champion": 0.5, "challenger": 0.5}), models, {"candidate": 1.0})
    return drift, metrics, variants


def _serve(drift: Drift, variants: VariantSet, events: list[dict[str, Any]]) -> None:
    """Score the events in batches of 512, as the agent does, and observe each batch; then
    flush, as the agent does when it goes idle."""
    for start in range(0, len(events), 512):
        chunk = events[start : start + 512]
        features = feature_matrix(chunk)
        scores = score(variants, features, [str(e["id"]) for e in chunk], RUNNER)
        drift.observe(features, scores.variants)
    drift.flush()
    assert not drift.stale


def _gauges(metrics: Metrics, variant: str) -> dict[str, float]:
    return {
        f: metrics.value("streamer_feature_drift_psi", feature=f, variant=variant) for f in FEATURES
    } | {"prediction": metrics.value("streamer_prediction_drift_psi", variant=variant)}


def test_unshifted_traffic_stays_below_the_threshold_and_shifted_crosses_it(
    tmp_path: Path,
    demo_model: Model,
    reference_rows: np.ndarray,
    caplog: pytest.LogCaptureFixture,
) -> None:
    drift, metrics, variants = _drift(tmp_path, demo_model, reference_rows, window=2000)
    live = generate_transactions(8000, seed=99)
    _serve(drift, variants, live)
    for variant in ("champion", "challenger"):
        psis = _gauges(metrics, variant)
        assert max(psis.values()) < 0.1, psis
        assert psis["amount"] > 0  # set, not absent
        events = metrics.value("streamer_drift_window_events", variant=variant)
        assert 2000 <= events < 2000 + 2000 // 32 + 512  # of its own rows
        shift = metrics.value(
            "streamer_feature_drift_mean_shift", feature="amount", variant=variant
        )
        assert abs(shift) < 0.1
    assert set(metrics.by_label("streamer_drift_window_events", "variant")) == {
        "champion",
        "challenger",
    }  # served variants only: the shadow is not measured

    caplog.set_level(logging.INFO, logger="streamer.drift")
    shifted = [
        {**e, "amount": cast(float, e["amount"]) * 5} for e in generate_transactions(8000, seed=98)
    ]
    _serve(drift, variants, shifted)
    for variant in ("champion", "challenger"):
        psis = _gauges(metrics, variant)
        assert psis["amount"] > 0.2, psis
        assert psis["hour"] < 0.1 and psis["merchant_risk"] < 0.1
        shift = metrics.value(
            "streamer_feature_drift_mean_shift", feature="amount", variant=variant
        )
        assert shift > 1.0
    crossed = [r.getMessage() for r in caplog.records if "above drift.threshold" in r.getMessage()]
    assert any("variant champion feature amount: PSI" in m for m in crossed), crossed
    # Logged once per crossing, not once per batch.
    assert sum("champion feature amount" in m for m in crossed) == 1

    caplog.clear()
    _serve(drift, variants, generate_transactions(8000, seed=97))
    assert max(_gauges(metrics, "champion").values()) < 0.1
    assert any("back within drift.threshold" in r.getMessage() for r in caplog.records)


def test_no_gauges_before_the_window_holds_min_events(
    tmp_path: Path, demo_model: Model, reference_rows: np.ndarray
) -> None:
    drift, metrics, variants = _drift(
        tmp_path, demo_model, reference_rows, window=2000, min_events=1500
    )
    _serve(drift, variants, generate_transactions(2000, seed=5))  # ~1000 per variant
    assert "streamer_feature_drift_psi{" not in metrics.render().decode()
    _serve(drift, variants, generate_transactions(2000, seed=6))
    assert "streamer_feature_drift_psi{" in metrics.render().decode()


def test_gauges_are_set_at_most_every_interval_and_on_flush(
    tmp_path: Path, demo_model: Model, reference_rows: np.ndarray
) -> None:
    _, profile = _profile(tmp_path, demo_model, reference_rows)
    write_profile(profile, tmp_path / "profile.json")
    topology = _topology(tmp_path, demo_model.path, profile="profile.json", min_events=1)
    now = [100.0]
    metrics = Metrics()
    drift = Drift(topology, load_profile(tmp_path / "profile.json"), metrics, clock=lambda: now[0])
    variants = VariantSet(Router({"champion": 1.0}), {"champion": demo_model}, {})

    def batch(seed: int) -> None:
        events = generate_transactions(100, seed=seed)
        features = feature_matrix(events)
        drift.observe(
            features, score(variants, features, [str(e["id"]) for e in events], RUNNER).variants
        )

    def events() -> float:
        return metrics.value("streamer_drift_window_events", variant="champion")

    batch(1)  # the first batch sets the gauges
    assert events() == 100 and not drift.stale
    now[0] += drift.refresh_s / 2
    batch(2)  # too soon: counted, not shown
    assert events() == 100 and drift.stale
    now[0] += drift.refresh_s / 2
    batch(3)  # an interval since the last refresh: shown
    assert events() == 300 and not drift.stale
    batch(4)
    assert events() == 300 and drift.stale
    drift.flush()  # the agent went idle
    assert events() == 400 and not drift.stale


def test_rows_with_non_finite_outputs_are_left_out(
    tmp_path: Path, demo_model: Model, reference_rows: np.ndarray
) -> None:
    drift, metrics, _ = _drift(tmp_path, demo_model, reference_rows, window=100, min_events=10)
    features = reference_rows[:20]
    scored = VariantScores(
        "champion",
        "v",
        False,
        np.arange(20),
        {"probabilities": [[0.5, float("nan")]] * 5 + [[0.9, 0.1]] * 15, "label": [0] * 20},
        1.0,
        0.0,
        np.array([False] * 5 + [True] * 15),
    )
    drift.observe(features, [scored])
    drift.flush()
    assert metrics.value("streamer_drift_window_events", variant="champion") == 15
    assert not drift.failed


def test_a_failure_stops_drift_without_stopping_serving(
    tmp_path: Path,
    demo_model: Model,
    reference_rows: np.ndarray,
    caplog: pytest.LogCaptureFixture,
) -> None:
    drift, _, _ = _drift(tmp_path, demo_model, reference_rows)
    broken = VariantScores(
        "champion", "v", False, np.arange(3), {}, 1.0, 0.0, np.ones(3, dtype=bool)
    )
    drift.observe(reference_rows[:3], [broken])  # no outputs at all: a bug, not the batch's
    assert drift.failed
    assert "drift measurement failed" in caplog.text
    drift.observe(reference_rows[:3], [broken])  # and stays quiet


# -- config and validate -------------------------------------------------------------------


def test_drift_is_off_by_default_and_its_profile_is_relative_to_the_topology(
    tmp_path: Path, demo_model: Model
) -> None:
    topology = _topology(tmp_path, demo_model.path)
    assert topology.drift.profile is None
    assert Drift.for_topology(topology, {}, Metrics()) is None
    topology = _topology(tmp_path, demo_model.path, profile="../models/profile.json")
    assert topology.drift.profile == (tmp_path.parent / "models" / "profile.json").resolve()
    assert topology.drift.events_needed == 1000
    assert _topology(tmp_path, demo_model.path, window=300).drift.events_needed == 300


def test_min_events_beyond_the_window_is_refused(tmp_path: Path, demo_model: Model) -> None:
    with pytest.raises(Exception, match="min_events must be at most window"):
        _topology(tmp_path, demo_model.path, window=100, min_events=200)


def _validate(path: Path) -> tuple[int, list[str], str]:
    result = CliRunner().invoke(app, ["validate", str(path)])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return result.exit_code, errors, result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "file not found (write one with `streamer profile"),
        (b"[]", "must be a JSON object"),
        (b'{"format": 1, "events": 10, "features": {"amount": {}}}', "features.amount.edges:"),
    ],
)
def test_validate_fails_on_a_missing_or_invalid_profile(
    tmp_path: Path, demo_model: Model, content: bytes | None, message: str
) -> None:
    profile = tmp_path / "profile.json"
    if content is not None:
        profile.write_bytes(content)
    topology = _topology(tmp_path, demo_model.path, profile="profile.json")
    code, errors, output = _validate(Path(str(topology.source)))
    assert code == 1, output
    assert len(errors) == 1, output
    assert errors[0].startswith(f"error: {topology.source}: drift.profile: {profile}: ")
    assert message in errors[0]
    assert "Traceback" not in output


def test_validate_accepts_a_fitting_profile_and_warns_of_a_variant_without_one(
    tmp_path: Path, demo_model: Model, reference_rows: np.ndarray
) -> None:
    _, profile = _profile(tmp_path, demo_model, reference_rows)
    del profile.predictions["challenger"]
    write_profile(profile, tmp_path / "profile.json")
    topology = _topology(tmp_path, demo_model.path, profile="profile.json")
    result = CliRunner().invoke(app, ["validate", str(topology.source)])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "drift.profile" in result.stderr
    assert "variant challenger" in result.stderr


def test_validate_fails_on_a_profile_without_a_feature(
    tmp_path: Path, demo_model: Model, reference_rows: np.ndarray
) -> None:
    _, profile = _profile(tmp_path, demo_model, reference_rows)
    del profile.features["merchant_risk"]
    write_profile(profile, tmp_path / "profile.json")
    topology = _topology(tmp_path, demo_model.path, profile="profile.json")
    code, errors, output = _validate(Path(str(topology.source)))
    assert code == 1 and len(errors) == 1, output
    assert "drift.profile:" in errors[0] and "merchant_risk" in errors[0]
