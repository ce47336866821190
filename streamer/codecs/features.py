"""Decode a batch of event values straight into the float32 model-input matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.codecs.base import DecodeError, Decoder
from streamer.records import Reason


@dataclass
class DecodedBatch:
    """The valid events of a batch as a matrix, and why the others were rejected."""

    features: np.ndarray
    """float32 (len(ok), n_features): row r is event ok[r]."""
    ok: list[int]
    """Indices (into the batch) of the events that became rows."""
    records: list[Mapping[str, Any]]
    """Decoded records of the `ok` events, same order."""
    values: list[list[float]]
    """The `ok` events' feature values as sent (before float32), same order."""
    rejected: list[tuple[int, DecodeError]] = field(default_factory=list)
    """(index into the batch, why) for each event that goes to the dead-letter topic."""


def decode_batch(
    values: Sequence[bytes | None], decoder: Decoder, features: Sequence[str]
) -> DecodedBatch:
    """Decode and validate every value; build the feature matrix of the good ones."""
    ok: list[int] = []
    records: list[Mapping[str, Any]] = []
    rows: list[list[float]] = []
    rejected: list[tuple[int, DecodeError]] = []
    for i, value in enumerate(values):
        try:
            record = decoder.decode(value)
            rows.append(_row(record, features))
        except DecodeError as err:
            rejected.append((i, err))
            continue
        except Exception as exc:
            # Hostile bytes can break any parser (RecursionError on deeply nested JSON):
            # that is the event's fault, not the batch's.
            detail = f"decoding raised {type(exc).__name__}: {exc}"
            rejected.append((i, DecodeError(Reason.UNDECODABLE, detail)))
            continue
        ok.append(i)
        records.append(record)
    matrix = _to_float32(rows, len(features))
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        keep = np.flatnonzero(finite)
        for r in np.flatnonzero(~finite):
            bad = [features[int(c)] for c in np.flatnonzero(~np.isfinite(matrix[r]))]
            rejected.append(
                (
                    ok[r],
                    DecodeError(
                        Reason.NON_FINITE,
                        f"NaN, infinite or out of float32 range: {', '.join(bad)}",
                    ),
                )
            )
        matrix = matrix[keep]
        ok = [ok[r] for r in keep]
        records = [records[r] for r in keep]
        rows = [rows[r] for r in keep]
    rejected.sort(key=lambda item: item[0])
    return DecodedBatch(matrix, ok, records, rows, rejected)


def _row(record: Mapping[str, Any], features: Sequence[str]) -> list[float]:
    row: list[float] = []
    for name in features:
        try:
            value = record[name]
        except KeyError:
            raise DecodeError(Reason.MISSING_FIELD, f"field {name!r} is missing") from None
        # bool is an int subclass, but True is not a meaningful feature value.
        if type(value) not in (int, float):
            raise DecodeError(
                Reason.WRONG_TYPE, f"field {name!r} must be a number, got {type(value).__name__}"
            )
        row.append(value)
    return row


def _to_float32(rows: list[list[float]], width: int) -> np.ndarray:
    if not rows:
        return np.empty((0, width), dtype=np.float32)
    try:
        wide = np.asarray(rows, dtype=np.float64)
    except OverflowError:  # an integer beyond float64: mark its row non-finite
        wide = np.array([[_as_float(v) for v in row] for row in rows], dtype=np.float64)
    with np.errstate(over="ignore"):
        return wide.astype(np.float32)


def _as_float(value: float) -> float:
    try:
        return float(value)
    except OverflowError:
        return float("inf")
