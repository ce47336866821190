"""Codecs: JSON and Avro round trips, and decode_batch's rejection reasons."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest

from streamer.codecs import (
    DecodeError,
    EncodeError,
    decode_batch,
    make_decoder,
    make_encoder,
)
from streamer.codecs.avro import AvroDecoder, AvroEncoder, load_schema, record_fields
from streamer.codecs.json import JsonDecoder, JsonEncoder

FEATURES = ["amount", "hour"]

TX_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Tx",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "hour", "type": "int"},
        {"name": "country", "type": "string"},
    ],
}


@pytest.fixture
def tx_schema(tmp_path: Path) -> Path:
    path = tmp_path / "tx.avsc"
    path.write_text(json.dumps(TX_SCHEMA))
    return path


def tx(i: int, amount: float = 12.5, hour: int = 3) -> dict[str, Any]:
    return {"id": f"tx-{i}", "amount": amount, "hour": hour, "country": "DE"}


def avro_bytes(record: Mapping[str, Any], schema: dict[str, Any] = TX_SCHEMA) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), dict(record))
    return buf.getvalue()


def js(value: Any) -> bytes:
    return json.dumps(value).encode()


# --- JSON -----------------------------------------------------------------------------------


def test_json_round_trip() -> None:
    record = {
        "id": "tx-1",
        "variant": "champion",
        "label": 1,
        "probabilities": [0.25, 0.75],
        "shadow": False,
        "note": "Zürich ✓",
        "nothing": None,
    }
    data = JsonEncoder().encode(record)
    assert isinstance(data, bytes)
    assert b", " not in data and b": " not in data  # compact separators
    assert JsonDecoder().decode(data) == record


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_json_encoder_rejects_non_finite(bad: float) -> None:
    with pytest.raises(EncodeError):
        JsonEncoder().encode({"id": "x", "score": bad})


@pytest.mark.parametrize("bad", [object(), b"bytes", {1, 2}])
def test_json_encoder_rejects_unserialisable(bad: object) -> None:
    with pytest.raises(EncodeError):
        JsonEncoder().encode({"id": "x", "value": bad})


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty_value"),
        (b"", "empty_value"),
        (b"\xff\xfe\x00garbage", "undecodable"),
        (b'{"amount": 1', "undecodable"),
        (b"not json at all", "undecodable"),
        (b"[1, 2, 3]", "not_a_record"),
        (b'"a string"', "not_a_record"),
        (b"42", "not_a_record"),
        (b"null", "not_a_record"),
    ],
)
def test_json_decoder_errors(value: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        JsonDecoder().decode(value)
    assert info.value.reason == reason
    assert info.value.detail
    assert "\n" not in str(info.value)


# --- Avro -----------------------------------------------------------------------------------


def test_avro_round_trip(tx_schema: Path) -> None:
    record = tx(7, amount=99.25, hour=23)
    data = AvroEncoder(tx_schema).encode(record)
    assert data == avro_bytes(record)  # schemaless body: no header, no framing
    assert AvroDecoder(tx_schema).decode(data) == record


@pytest.mark.parametrize(
    "record",
    [
        {"id": "x", "amount": 1.0, "hour": 1},  # missing field
        {"id": "x", "amount": "lots", "hour": 1, "country": "DE"},  # wrong type
        {"id": 5, "amount": 1.0, "hour": 1, "country": "DE"},  # wrong type
    ],
)
def test_avro_encoder_rejects_schema_mismatch(tx_schema: Path, record: dict[str, Any]) -> None:
    with pytest.raises(EncodeError, match="does not fit the Avro schema"):
        AvroEncoder(tx_schema).encode(record)


def test_avro_decoder_errors(tx_schema: Path) -> None:
    decoder = AvroDecoder(tx_schema)
    good = avro_bytes(tx(1))
    cases: list[tuple[bytes | None, str]] = [
        (None, "empty_value"),
        (b"", "empty_value"),
        (good[: len(good) // 2], "undecodable"),
        (good + b"\x00\x01", "undecodable"),
        (b"\xff" * 3, "undecodable"),
    ]
    for value, reason in cases:
        with pytest.raises(DecodeError) as info:
            decoder.decode(value)
        assert info.value.reason == reason, value
    with pytest.raises(DecodeError, match="2 trailing bytes"):
        decoder.decode(good + b"\x00\x01")


def test_avro_non_record_schema_is_not_a_record(tmp_path: Path) -> None:
    path = tmp_path / "double.avsc"
    path.write_text(json.dumps("double"))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema("double"), 1.5)
    with pytest.raises(DecodeError) as info:
        AvroDecoder(path).decode(body.getvalue())
    assert info.value.reason == "not_a_record"
    assert record_fields(load_schema(path)) == {}


def test_load_schema_errors_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.avsc"
    not_json = tmp_path / "not_json.avsc"
    not_json.write_text("{oops")
    invalid = tmp_path / "invalid.avsc"
    invalid.write_text(json.dumps({"type": "record", "name": "R", "fields": [{"name": "a"}]}))
    for path, fragment in [
        (missing, "schema file not found"),
        (not_json, "not JSON"),
        (invalid, "invalid Avro schema"),
    ]:
        with pytest.raises(ValueError, match=fragment) as info:
            load_schema(path)
        assert str(path) in str(info.value)
        assert "\n" not in str(info.value)


def test_record_fields(tx_schema: Path) -> None:
    assert record_fields(load_schema(tx_schema)) == {
        "id": "string",
        "amount": "double",
        "hour": "int",
        "country": "string",
    }


def test_make_codec_by_format(tx_schema: Path) -> None:
    assert isinstance(make_decoder("json", None), JsonDecoder)
    assert isinstance(make_decoder("avro", tx_schema), AvroDecoder)
    assert isinstance(make_encoder("json", None), JsonEncoder)
    assert isinstance(make_encoder("avro", tx_schema), AvroEncoder)


# --- decode_batch ---------------------------------------------------------------------------


def test_decode_batch_mixed_json() -> None:
    values: list[bytes | None] = [
        js(tx(0, amount=1.5, hour=2)),  # 0 ok
        None,  # 1 empty_value
        b"\xff\xfe not utf-8",  # 2 undecodable
        js([1.0, 2.0]),  # 3 not_a_record
        js(tx(4, amount=-3.25, hour=0)),  # 4 ok
        js({"id": "tx-5", "amount": 1.0}),  # 5 missing_field (hour)
        js({"id": "tx-6", "amount": "12.5", "hour": 1}),  # 6 wrong_type: string
        js({"id": "tx-7", "amount": True, "hour": 1}),  # 7 wrong_type: bool
        js({"id": "tx-8", "amount": None, "hour": 1}),  # 8 wrong_type: null
        b'{"id": "tx-9", "amount": NaN, "hour": 1}',  # 9 non_finite: NaN
        b'{"id": "tx-10", "amount": Infinity, "hour": 1}',  # 10 non_finite: inf
        b'{"id": "tx-11", "amount": 1.0, "hour": -Infinity}',  # 11 non_finite: -inf
        b'{"id": "tx-12", "amount": 1e39, "hour": 1}',  # 12 non_finite: float32 overflow
        ('{"id": "tx-13", "amount": 1, "hour": ' + "9" * 400 + "}").encode(),  # 13 huge int
        js({"id": "tx-14", "amount": 7, "hour": 23}),  # 14 ok (ints are numbers)
        b"",  # 15 empty_value
        js({"id": "tx-16", "amount": [1.0], "hour": 1}),  # 16 wrong_type: list
        b'{"id": "tx-17", "amount": 2.0',  # 17 undecodable: truncated JSON
        js({"id": "tx-18", "amount": 0.1, "hour": 12, "extra": "ignored"}),  # 18 ok
    ]
    batch = decode_batch(values, JsonDecoder(), FEATURES)

    assert batch.ok == [0, 4, 14, 18]
    assert batch.features.dtype == np.float32
    assert batch.features.shape == (4, 2)
    np.testing.assert_array_equal(
        batch.features,
        np.array([[1.5, 2], [-3.25, 0], [7, 23], [0.1, 12]], dtype=np.float32),
    )
    assert [r["id"] for r in batch.records] == ["tx-0", "tx-4", "tx-14", "tx-18"]

    reasons = {i: err.reason for i, err in batch.rejected}
    assert reasons == {
        1: "empty_value",
        2: "undecodable",
        3: "not_a_record",
        5: "missing_field",
        6: "wrong_type",
        7: "wrong_type",
        8: "wrong_type",
        9: "non_finite",
        10: "non_finite",
        11: "non_finite",
        12: "non_finite",
        13: "non_finite",
        15: "empty_value",
        16: "wrong_type",
        17: "undecodable",
    }
    indices = [i for i, _ in batch.rejected]
    assert indices == sorted(indices)
    assert sorted(batch.ok + indices) == list(range(len(values)))  # each event exactly once
    details = dict(batch.rejected)
    assert "'hour'" in details[5].detail
    assert "bool" in details[7].detail
    assert "NoneType" in details[8].detail
    assert "amount" in details[12].detail
    assert "hour" in details[13].detail
    assert "amount" not in details[13].detail


def test_decode_batch_huge_int_keeps_other_rows_exact() -> None:
    values = [
        js({"amount": 2.5, "hour": 4}),
        ('{"amount": ' + "1" + "0" * 400 + ', "hour": 1}').encode(),
        js({"amount": -1.25, "hour": 9}),
    ]
    batch = decode_batch(values, JsonDecoder(), FEATURES)
    assert batch.ok == [0, 2]
    np.testing.assert_array_equal(batch.features, np.array([[2.5, 4], [-1.25, 9]], np.float32))
    assert [(i, e.reason) for i, e in batch.rejected] == [(1, "non_finite")]


def test_decode_batch_mixed_avro(tx_schema: Path) -> None:
    good = avro_bytes(tx(0, amount=10.0, hour=5))
    values: list[bytes | None] = [
        good,  # 0 ok
        good[:-3],  # 1 undecodable: truncated
        good + b"\x02",  # 2 undecodable: trailing bytes
        avro_bytes(tx(3, amount=float("nan"))),  # 3 non_finite
        avro_bytes(tx(4, amount=float("inf"))),  # 4 non_finite
        avro_bytes(tx(5, amount=1e300)),  # 5 non_finite: beyond float32
        None,  # 6 empty_value
        avro_bytes(tx(7, amount=-0.5, hour=21)),  # 7 ok
    ]
    batch = decode_batch(values, AvroDecoder(tx_schema), FEATURES)
    assert batch.ok == [0, 7]
    np.testing.assert_array_equal(batch.features, np.array([[10, 5], [-0.5, 21]], np.float32))
    assert [(i, e.reason) for i, e in batch.rejected] == [
        (1, "undecodable"),
        (2, "undecodable"),
        (3, "non_finite"),
        (4, "non_finite"),
        (5, "non_finite"),
        (6, "empty_value"),
    ]


def test_decode_batch_feature_order_follows_topology(tx_schema: Path) -> None:
    values = [avro_bytes(tx(0, amount=3.0, hour=8))]
    batch = decode_batch(values, AvroDecoder(tx_schema), ["hour", "amount"])
    np.testing.assert_array_equal(batch.features, np.array([[8, 3]], np.float32))


def test_decode_batch_all_rejected_and_empty() -> None:
    batch = decode_batch([None, b"[]"], JsonDecoder(), FEATURES)
    assert batch.ok == []
    assert batch.records == []
    assert batch.features.shape == (0, 2)
    assert batch.features.dtype == np.float32
    assert [e.reason for _, e in batch.rejected] == ["empty_value", "not_a_record"]

    empty = decode_batch([], JsonDecoder(), FEATURES)
    assert empty.features.shape == (0, 2)
    assert empty.features.dtype == np.float32
    assert (empty.ok, empty.rejected) == ([], [])


def test_decode_batch_matrix_is_contiguous_float32() -> None:
    values = [js({"amount": float(i), "hour": i % 24}) for i in range(100)]
    batch = decode_batch(values, JsonDecoder(), FEATURES)
    assert batch.features.flags["C_CONTIGUOUS"]
    assert batch.features.dtype == np.float32
    assert batch.ok == list(range(100))
    np.testing.assert_array_equal(batch.features[:, 0], np.arange(100, dtype=np.float32))
