"""Avro values: schemaless fastavro bodies (no container header, no registry framing)."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fastavro
from fastavro.types import Schema

from streamer.codecs.base import DecodeError, EncodeError
from streamer.records import Reason


def load_schema(path: Path) -> Schema:
    """Parse an .avsc file once; raise ValueError with a one-line reason."""
    try:
        return fastavro.parse_schema(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ValueError(f"{path}: schema file not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from None
    except Exception as exc:  # fastavro raises several types for invalid schemas
        raise ValueError(f"{path}: invalid Avro schema: {exc}") from None


def record_fields(schema: Schema) -> dict[str, Any]:
    """Top-level field name -> Avro type of a record schema."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return {}
    return {f["name"]: f["type"] for f in schema.get("fields", [])}


class AvroDecoder:
    def __init__(self, schema: Path) -> None:
        self.schema = load_schema(schema)

    def decode(self, value: bytes | None) -> Mapping[str, Any]:
        if not value:
            raise DecodeError(Reason.EMPTY_VALUE, "the message has no value")
        buf = io.BytesIO(value)
        try:
            record = fastavro.schemaless_reader(buf, self.schema, None)
        except Exception as exc:  # truncated or corrupt bodies raise many types
            raise DecodeError(
                Reason.UNDECODABLE, f"not an Avro record of the schema: {exc!r}"
            ) from None
        if buf.tell() != len(value):
            # Schemaless Avro has no framing: leftover bytes mean the writer used another schema.
            raise DecodeError(
                Reason.UNDECODABLE,
                f"{len(value) - buf.tell()} trailing bytes after the Avro record",
            )
        if not isinstance(record, dict):
            raise DecodeError(Reason.NOT_A_RECORD, "the Avro value is not a record")
        return record


class AvroEncoder:
    def __init__(self, schema: Path) -> None:
        self.schema = load_schema(schema)

    def encode(self, record: Mapping[str, Any]) -> bytes:
        buf = io.BytesIO()
        try:
            fastavro.schemaless_writer(buf, self.schema, dict(record))
        except Exception as exc:  # fastavro raises ValueError/TypeError/KeyError on mismatch
            raise EncodeError(f"record does not fit the Avro schema: {exc!r}") from None
        return buf.getvalue()
