"""Wire formats: event bytes -> records -> float32 feature matrix, and records -> bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from streamer.codecs.avro import AvroDecoder, AvroEncoder
from streamer.codecs.base import DecodeError, Decoder, EncodeError, Encoder
from streamer.codecs.features import DecodedBatch, decode_batch
from streamer.codecs.json import JsonDecoder, JsonEncoder

__all__ = [
    "DecodeError",
    "DecodedBatch",
    "Decoder",
    "EncodeError",
    "Encoder",
    "decode_batch",
    "make_decoder",
    "make_encoder",
]


def make_decoder(fmt: Literal["avro", "json"], schema: Path | None) -> Decoder:
    """The decoder for an input topic's value format."""
    if fmt == "avro":
        assert schema is not None, "config guarantees a schema for avro"
        return AvroDecoder(schema)
    return JsonDecoder()


def make_encoder(fmt: Literal["avro", "json"], schema: Path | None) -> Encoder:
    """The encoder for an output or lake topic's value format."""
    if fmt == "avro":
        assert schema is not None, "config guarantees a schema for avro"
        return AvroEncoder(schema)
    return JsonEncoder()
