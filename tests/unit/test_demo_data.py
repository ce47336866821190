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
