"""The records the engine writes: outputs, lake entries and dead letters (README "Records")."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

ERROR_HEADER = "streamer.error"
DETAIL_HEADER = "streamer.detail"
TOPIC_HEADER = "streamer.topic"
PARTITION_HEADER = "streamer.partition"
OFFSET_HEADER = "streamer.offset"
Headers = list[tuple[str, str | bytes | None]]
"""Kafka record headers as confluent-kafka takes them."""
ReadHeaders = Headers | dict[str, str | bytes | None]
"""Kafka record headers as confluent-kafka may return them."""
MAX_DETAIL = 1000
"""Dead-letter detail is for humans; a runaway exception text must not bloat the topic."""


class Reason(StrEnum):
    """Why an event went to the dead-letter topic (the `streamer.error` header)."""

    EMPTY_VALUE = "empty_value"
    """The message has no value."""
    UNDECODABLE = "undecodable"
    """The value is not in the input format (or decoding it failed in any way)."""
    NOT_A_RECORD = "not_a_record"
    """The value decoded to something other than a record/object."""
    MISSING_FIELD = "missing_field"
    """A feature field is absent."""
    WRONG_TYPE = "wrong_type"
    """A feature field is not a number."""
    NON_FINITE = "non_finite"
    """A feature is NaN, infinite, or out of float32 range."""
    INFERENCE_FAILED = "inference_failed"
    """The served variant's model raised on this event (found by bisecting the batch)."""
    NON_FINITE_OUTPUT = "non_finite_output"
    """The served variant's model returned NaN or infinity for this event."""
    ENCODE_FAILED = "encode_failed"
    """The output format cannot hold the prediction (e.g. an Avro schema mismatch)."""
    TOO_LARGE = "too_large"
    """The output record is larger than the output topic or the producer accepts."""


def output_record(
    *,
    event_id: str,
    variant: str,
    version: str,
    outputs: Mapping[str, Any],
    ts_event: int,
    ts_predicted: int,
) -> dict[str, Any]:
    """The served prediction: id, variant, model_version, one field per output, timestamps."""
    return {
        "id": event_id,
        "variant": variant,
        "model_version": version,
        **outputs,
        "ts_event": ts_event,
        "ts_predicted": ts_predicted,
    }


def lake_record(
    output: Mapping[str, Any],
    *,
    shadow: bool,
    features: list[float],
    latency_ms: float,
    topology: str,
    propensity: float,
) -> dict[str, Any]:
    """An output plus what off-policy evaluation and monitoring need."""
    return {
        **output,
        "shadow": shadow,
        "features": features,
        "latency_ms": latency_ms,
        "topology": topology,
        "propensity": propensity,
    }


def dead_letter_headers(
    original: ReadHeaders | None,
    reason: Reason,
    detail: str,
    *,
    topic: str,
    partition: int,
    offset: int,
) -> Headers:
    """The input's own headers, then why and where from; the key and value travel untouched."""
    ours: Headers = [
        (ERROR_HEADER, reason.value.encode()),
        (DETAIL_HEADER, detail[:MAX_DETAIL].encode("utf-8", "backslashreplace")),
        (TOPIC_HEADER, topic.encode()),
        (PARTITION_HEADER, str(partition).encode()),
        (OFFSET_HEADER, str(offset).encode()),
    ]
    if not original:
        return ours
    pairs = list(original.items()) if isinstance(original, dict) else original
    # A re-dead-lettered event must carry one current set of streamer.* headers.
    return [h for h in pairs if not h[0].startswith("streamer.")] + ours
