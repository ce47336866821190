"""The records the engine writes: outputs, lake entries and dead letters (DESIGN.md shapes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ERROR_HEADER = "streamer.error"
DETAIL_HEADER = "streamer.detail"
Headers = list[tuple[str, str | bytes | None]]
"""Kafka record headers as confluent-kafka takes them."""
MAX_DETAIL = 1000
"""Dead-letter detail is for humans; a runaway exception text must not bloat the topic."""


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
    reason: str, detail: str, topic: str, partition: int, offset: int
) -> Headers:
    """Why and where from, as headers; the key and value travel untouched."""
    return [
        (ERROR_HEADER, reason.encode()),
        (DETAIL_HEADER, detail[:MAX_DETAIL].encode("utf-8", "backslashreplace")),
        ("streamer.topic", topic.encode()),
        ("streamer.partition", str(partition).encode()),
        ("streamer.offset", str(offset).encode()),
    ]
