"""JSON values: UTF-8 objects in, compact UTF-8 objects out."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from streamer.codecs.base import DecodeError, EncodeError


class JsonDecoder:
    def decode(self, value: bytes | None) -> Mapping[str, Any]:
        if not value:
            raise DecodeError("empty_value", "the message has no value")
        try:
            record = json.loads(value)
        except UnicodeDecodeError as exc:
            raise DecodeError("undecodable", f"not UTF-8: {exc.reason}") from None
        except ValueError as exc:
            raise DecodeError("undecodable", f"not JSON: {exc}") from None
        if not isinstance(record, dict):
            kind = type(record).__name__
            raise DecodeError("not_a_record", f"expected a JSON object, got {kind}")
        return record


class JsonEncoder:
    def encode(self, record: Mapping[str, Any]) -> bytes:
        try:
            # allow_nan=False: NaN is not JSON and would break every consumer downstream.
            return json.dumps(record, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise EncodeError(str(exc)) from None
