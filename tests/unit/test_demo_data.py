"""Tests for the synthetic transaction generator, and for how the demo reports what it served
(the live view's lines and the summary)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest

from streamer.demo.data import (
    DEFAULT_START_MS,
    FEATURES,
    feature_matrix,
    generate_dataset,
    generate_transactions,
)
from streamer.demo.runner import (
    DemoSummary,
    LiveLine,
    VariantLive,
    format_live_line,
    format_summary,
    format_versions,
    live_variants,
)

SCHEMA_PATH = Path(__file__).parents[2] / "schemas" / "transaction.avsc"


@pytest.fixture(scope="module")
def dataset() -> tuple[list[dict[str, object]], np.ndarray[Any, np.dtype[np.int8]]]:
    return generate_dataset(20_000)


def test_same_seed_gives_identical_events_and_labels() -> None:
    events_a, labels_a = generate_dataset(2_000, seed=3)
    events_b, labels_b = generate_dataset(2_000, seed=3)
    assert events_a == events_b
    assert np.array_equal(labels_a, labels_b)


def test_different_seed_gives_different_events() -> None:
    assert generate_transactions(200, seed=1) != generate_transactions(200, seed=2)


def test_generate_transactions_matches_dataset_events() -> None:
    assert generate_transactions(500, seed=11) == generate_dataset(500, seed=11)[0]


def test_event_shape_matches_schema_fields() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    expected_types = {"string": str, "long": int, "double": float, "int": int}
    for event in generate_transactions(100):
        assert list(event) == [f["name"] for f in schema["fields"]]
        for field in schema["fields"]:
            assert type(event[field["name"]]) is expected_types[field["type"]]


def test_ids_are_unique_and_formatted(
    dataset: tuple[list[dict[str, object]], np.ndarray[Any, np.dtype[np.int8]]],
) -> None:
    ids = [e["id"] for e in dataset[0]]
    assert len(set(ids)) == len(ids)
    assert ids[12] == "tx-000000012"
    assert all(isinstance(i, str) and re.fullmatch(r"tx-\d{9}", i) for i in ids)


def test_timestamps_start_at_start_ms_and_strictly_increase() -> None:
    ts = np.array([e["ts"] for e in generate_transactions(5_000, start_ms=1_000)])
    assert ts[0] == 1_000
    gaps = np.diff(ts)
    assert (gaps > 0).all()
    assert 50 < gaps.mean() < 250  # a busy but plausible card stream
    assert generate_transactions(1)[0]["ts"] == DEFAULT_START_MS


def test_value_ranges(
    dataset: tuple[list[dict[str, object]], np.ndarray[Any, np.dtype[np.int8]]],
) -> None:
    x = feature_matrix(dataset[0])
    amount, age, hour, risk = x.T
    assert (amount > 0).all()
    assert 30 < np.median(amount) < 50
    assert np.percentile(amount, 99) > 5 * np.median(amount)  # long tail
    assert (age >= 0).all()
    assert set(np.unique(hour).tolist()) == set(range(24))
    assert ((risk >= 0) & (risk <= 1)).all()
    countries = {e["country"] for e in dataset[0]}
    assert all(isinstance(c, str) and re.fullmatch(r"[A-Z]{2}", c) for c in countries)


def test_labels_dtype_and_fraud_rate(
    dataset: tuple[list[dict[str, object]], np.ndarray[Any, np.dtype[np.int8]]],
) -> None:
    events, labels = dataset
    assert labels.dtype == np.int8
    assert labels.shape == (len(events),)
    assert set(np.unique(labels).tolist()) == {0, 1}
    assert 0.02 <= labels.mean() <= 0.04


def test_fraud_concentrates_on_new_accounts_and_nights(
    dataset: tuple[list[dict[str, object]], np.ndarray[Any, np.dtype[np.int8]]],
) -> None:
    events, labels = dataset
    x = feature_matrix(events)
    new = x[:, 1] < 60
    night = (x[:, 2] <= 5) | (x[:, 2] >= 23)
    assert labels[new].mean() > 3 * labels[~new].mean()
    assert labels[night].mean() > 2 * labels[~night].mean()


def test_feature_matrix_shape_dtype_and_order() -> None:
    events = generate_transactions(300)
    x = feature_matrix(events)
    assert x.shape == (300, len(FEATURES))
    assert x.dtype == np.float32
    for col, name in enumerate(FEATURES):
        expected = np.array([e[name] for e in events], dtype=np.float32)
        assert np.array_equal(x[:, col], expected)
    assert feature_matrix([]).shape == (0, len(FEATURES))


def test_empty_and_negative_sizes() -> None:
    events, labels = generate_dataset(0)
    assert events == []
    assert labels.shape == (0,)
    with pytest.raises(ValueError, match="n must be"):
        generate_dataset(-1)


def test_every_event_round_trips_through_avro(
    dataset: tuple[list[dict[str, object]], np.ndarray[Any, np.dtype[np.int8]]],
) -> None:
    schema = fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text()))
    for event in dataset[0]:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, event)
        buf.seek(0)
        assert fastavro.schemaless_reader(buf, schema, schema) == event


# The demo's live view and summary.


def _line(*variants: VariantLive) -> LiveLine:
    return LiveLine(
        elapsed=3.0, served=14_512, dead_letters=145, rate=5_010.4, variants=list(variants)
    )


def test_live_line_shows_weight_share_and_version_per_variant() -> None:
    line = _line(
        VariantLive("champion", 0.9, 4_459, "fraud_v1"),
        VariantLive("challenger", 0.1, 551, "1"),
    )
    assert format_live_line(line) == (
        "t=  3.0s served 14,512 dl 145  5,010 ev/s"
        " | champion w0.90 89% v fraud_v1 | challenger w0.10 11% v 1"
    )


def test_live_line_shows_disabled_variants_and_idle_seconds() -> None:
    idle = _line(
        VariantLive("champion", 1.0, 0, "fraud_v1"), VariantLive("challenger", None, 0, "2")
    )
    assert format_live_line(idle).endswith(
        " | champion w1.00   - v fraud_v1 | challenger off     - v 2"
    )
    promoted = _line(
        VariantLive("champion", None, 0, "fraud_v1"), VariantLive("challenger", 1.0, 9, "2")
    )
    assert format_live_line(promoted).endswith(
        " | champion off    0% v fraud_v1 | challenger w1.00 100% v 2"
    )


def test_live_line_stays_readable_at_large_counts() -> None:
    line = LiveLine(
        elapsed=1234.5,
        served=12_345_678,
        dead_letters=123_456,
        rate=98_765.0,
        variants=[
            VariantLive("champion", 0.333, 1_000, "fraud_v1"),
            VariantLive("challenger", 0.333, 1_000, "12"),
            VariantLive("canary", 0.334, 1_000, "fraud_v3"),
        ],
    )
    text = format_live_line(line)
    assert len(text) < 150, text
    assert "served 12,345,678 dl 123,456 98,765 ev/s" in text
    assert "canary w0.33 33% v fraud_v3" in text


def test_live_variants_count_what_each_variant_served_since_the_last_line() -> None:
    variants = live_variants(
        weights={"champion": 0.8, "challenger": 0.2},
        versions={"champion": "fraud_v1", "challenger": "3", "candidate": "fraud_v3"},
        before={"champion": 100, "challenger": 10, "canary": 5},
        after={"champion": 180, "challenger": 30, "canary": 5},
    )
    assert variants == [
        VariantLive("champion", 0.8, 80, "fraud_v1"),
        VariantLive("challenger", 0.2, 20, "3"),
        VariantLive("canary", None, 0, "?"),  # disabled, and no model known
    ]
    first = live_variants({"champion": 1.0}, {"champion": "fraud_v1"}, {}, {"champion": 7})
    assert first == [VariantLive("champion", 1.0, 7, "fraud_v1")]


def test_versions_list_each_variant_and_counts_only_when_one_changed() -> None:
    assert format_versions({}) == "none"
    assert (
        format_versions({"challenger": {"1": 300}, "champion": {"fraud_v1": 2_700}})
        == "challenger 1, champion fraud_v1"
    )
    # Numeric versions in numeric order (a new version was added while the demo ran).
    assert (
        format_versions({"challenger": {"10": 5, "2": 120, "1": 30}, "champion": {"fraud_v1": 9}})
        == "challenger 1 (30) 2 (120) 10 (5), champion fraud_v1"
    )


def test_summary_shows_the_split_and_model_versions() -> None:
    summary = DemoSummary(
        events=3_000,
        served=2_970,
        dead_letters={"decode_failed": 30},
        seconds=2.5,
        throughput=2_900.0,
        latency_ms={"p50": 4.0, "p95": 9.0, "p99": 12.0, "max": 20.0},
        variants={"champion": 2_673, "challenger": 297},
        versions={"champion": {"fraud_v1": 2_673}, "challenger": {"1": 297}},
        shadow_scored=2_970,
    )
    lines = format_summary(summary).splitlines()
    assert "  predictions out  2970  (challenger 297 (10%), champion 2673 (90%))" in lines
    assert "  model versions   challenger 1, champion fraud_v1" in lines
    assert "  shadow scored    2970" in lines
