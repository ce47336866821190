"""What one batch produces, decided without touching Kafka.

`assemble` decodes the batch, scores it with one `VariantSet`, and returns every record to
publish (outputs, lake entries, dead letters, encoded, with keys and headers) and the counts
that describe them. The agent only publishes the result; any source of messages with
Kafka's accessors (a file, a request) can be assembled the same way.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple, Protocol

import numpy as np
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

from streamer.codecs import Decoder, EncodeError, Encoder, decode_batch
from streamer.inference import Scores, ShadowRunner, VariantScores, score
from streamer.records import Headers, ReadHeaders, Reason, dead_letter_headers, lake_record
from streamer.variants import VariantSet

RECORD_OVERHEAD_BYTES = 128
"""Kafka's per-batch and per-record framing, kept free below a topic's size limit."""


class InputMessage(Protocol):
    """What assembly reads of a consumed message (confluent-kafka's `Message` has it)."""

    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> ReadHeaders | None: ...
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def timestamp(self) -> tuple[int, int]: ...


class Kind(Enum):
    OUTPUT = "output"
    LAKE = "lake"
    DEAD_LETTER = "dead_letter"


class Outgoing(NamedTuple):
    """One record to publish."""

    kind: Kind
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers | None
    source: int
    """Index of the input message in its batch that this record answers."""
    variant: str = ""
    """The variant whose prediction this is (outputs and lake entries)."""


@dataclass(frozen=True)
class Destinations:
    """Where a batch's records go and how they are encoded."""

    topology: str
    output_topic: str
    lake_topic: str | None
    """None when the lake is off."""
    dead_letter_topic: str
    output_encoder: Encoder
    lake_encoder: Encoder
    features: Sequence[str]
    max_bytes: Mapping[str, int] = field(default_factory=dict)
    """Topic -> largest record (key + value + headers) it accepts; absent means no limit."""


@dataclass
class Assembled:
    """Everything one batch produces, in publishing order (input order per partition)."""

    records: list[Outgoing] = field(default_factory=list)
    served: Counter[str] = field(default_factory=Counter)
    """Variant -> outputs published."""
    shadowed: Counter[str] = field(default_factory=Counter)
    """Shadow variant -> events it scored."""
    dead_letters: Counter[Reason] = field(default_factory=Counter)
    lake_dropped: Counter[str] = field(default_factory=Counter)
    """Why lake records were not written (the event itself was served)."""
    shadow_failures: dict[str, int] = field(default_factory=dict)
    shadow_skipped: dict[str, int] = field(default_factory=dict)
    """Shadow variant -> rows its time budget left unscored."""
    features: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.float32))
    """The decoded feature matrix (recent real rows probe new model versions)."""
    inference_seconds: dict[str, float] = field(default_factory=dict)
    event_ms: np.ndarray = field(default_factory=lambda: np.empty(0))
    """Event timestamps (ms) of the served events, for the end-to-end histogram."""
    scored: list[VariantScores] = field(default_factory=list)
    """What each variant scored (rows of `features`, outputs), for drift measurement."""


def assemble(
    messages: Sequence[InputMessage],
    decoder: Decoder,
    variants: VariantSet,
    dest: Destinations,
    shadows: ShadowRunner,
    *,
    fetched_at: float,
    clock: Callable[[], float] = time.time,
) -> Assembled:
    """Decode, score and encode one batch; `clock()` after scoring stamps the predictions."""
    out = Assembled()
    decoded = decode_batch([m.value() for m in messages], decoder, dest.features)
    for index, err in decoded.rejected:
        out.records.append(
            dead_letter(dest.dead_letter_topic, messages[index], index, err.reason, err.detail)
        )
        out.dead_letters[err.reason] += 1
    if not decoded.ok:
        return out
    good = [messages[i] for i in decoded.ok]
    ids = [event_id(m, r) for m, r in zip(good, decoded.records, strict=True)]
    ts_events = [event_ts(m, fetched_at) for m in good]
    scores = score(variants, decoded.features, ids, shadows)
    out.features = decoded.features
    out.scored = scores.variants
    out.shadow_failures = scores.shadow_failures
    out.shadow_skipped = scores.shadow_skipped
    now = clock()
    ts_predicted = int(now * 1000)
    served_by = _served_by(scores)
    served: dict[int, dict[str, Any]] = {}
    for row, index in enumerate(decoded.ok):  # input order keeps each partition's order
        key = good[row].key()
        result = _output(
            dest, scores, served_by, row, key, event=ids[row], ts=ts_events[row], now=now
        )
        if isinstance(result[0], Reason):
            reason, detail = result
            out.records.append(
                dead_letter(dest.dead_letter_topic, messages[index], index, reason, detail)
            )
            out.dead_letters[reason] += 1
            continue
        served[row], value = result
        variant = served[row]["variant"]
        out.records.append(
            Outgoing(Kind.OUTPUT, dest.output_topic, key, value, None, index, variant)
        )
        out.served[variant] += 1
    out.event_ms = np.fromiter((ts_events[row] for row in served), dtype=np.float64)

    for s in scores.variants:
        out.inference_seconds[s.variant] = s.seconds
        if s.shadow:
            out.shadowed[s.variant] = len(s.rows)
    if dest.lake_topic is not None:  # lake.enabled
        latency_ms = round((now - fetched_at) * 1000.0, 3)
        lake = _Lake(dest, dest.lake_topic, out, good, decoded.ok, decoded.values, latency_ms)
        for s in scores.variants:
            for j, row in enumerate(s.rows.tolist()):
                if s.shadow:
                    record = s.record(j, ids[row], ts_events[row], ts_predicted)
                elif row in served:
                    record = served[row]
                else:
                    continue  # dead-lettered: the lake holds only what was served or shadowed
                lake.add(s, row, record)
    return out


@dataclass
class _Lake:
    """Appends a batch's lake records to `out` (dropping, and counting, what cannot go)."""

    dest: Destinations
    topic: str
    out: Assembled
    good: Sequence[InputMessage]
    indices: Sequence[int]
    values: Sequence[list[Any]]
    latency_ms: float

    def add(self, s: VariantScores, row: int, record: Mapping[str, Any]) -> None:
        lake = lake_record(
            record,
            shadow=s.shadow,
            features=self.values[row],
            latency_ms=self.latency_ms,
            topology=self.dest.topology,
            propensity=s.propensity,
        )
        try:
            value = self.dest.lake_encoder.encode(lake)
        except EncodeError:
            self.out.lake_dropped["encode_failed"] += 1
            return
        key = self.good[row].key()
        if _too_large(self.dest, self.topic, key, value, None):
            self.out.lake_dropped["too_large"] += 1
            return
        self.out.records.append(
            Outgoing(Kind.LAKE, self.topic, key, value, None, self.indices[row], s.variant)
        )


def _served_by(scores: Scores) -> dict[int, tuple[VariantScores, int]]:
    served_by: dict[int, tuple[VariantScores, int]] = {}
    for s in scores.variants:
        if not s.shadow:
            served_by.update((row, (s, j)) for j, row in enumerate(s.rows.tolist()))
    return served_by


def _output(
    dest: Destinations,
    scores: Scores,
    served_by: Mapping[int, tuple[VariantScores, int]],
    row: int,
    key: bytes | None,
    *,
    event: str,
    ts: int,
    now: float,
) -> tuple[dict[str, Any], bytes] | tuple[Reason, str]:
    """The row's output record and its bytes, or why the event is not served."""
    if row in scores.failed:
        return Reason.INFERENCE_FAILED, scores.failed[row]
    s, j = served_by[row]
    if not s.finite[j]:
        return Reason.NON_FINITE_OUTPUT, f"variant {s.variant} returned NaN or infinity"
    record = s.record(j, event, ts, int(now * 1000))
    try:
        value = dest.output_encoder.encode(record)
    except EncodeError as exc:
        return Reason.ENCODE_FAILED, str(exc)
    if _too_large(dest, dest.output_topic, key, value, None):
        limit = dest.max_bytes[dest.output_topic]
        return Reason.TOO_LARGE, f"output of {len(value)} bytes; {dest.output_topic} takes {limit}"
    return record, value


def _too_large(
    dest: Destinations, topic: str, key: bytes | None, value: bytes, headers: Headers | None
) -> bool:
    limit = dest.max_bytes.get(topic)
    if limit is None:
        return False
    size = len(value) + len(key or b"") + RECORD_OVERHEAD_BYTES
    if headers:  # outputs and lake entries have none: no generator for them (2 per event)
        size += sum(len(k) + len(v or b"") for k, v in headers)
    return size > limit


def dead_letter(topic: str, msg: InputMessage, index: int, reason: Reason, detail: str) -> Outgoing:
    """The dead letter of `msg` (the `index`-th of its batch): its key and value untouched,
    its headers plus why and where from."""
    source, partition, offset = coordinates(msg)
    headers = dead_letter_headers(
        msg.headers(), reason, detail, topic=source, partition=partition, offset=offset
    )
    return Outgoing(Kind.DEAD_LETTER, topic, msg.key(), msg.value(), headers, index)


def coordinates(msg: InputMessage) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed message (never None once consumed)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset


def event_id(msg: InputMessage, record: Mapping[str, Any]) -> str:
    """The input key as text; else the event's `id` field; else its Kafka coordinates."""
    key = msg.key()
    if key:
        return key.decode("utf-8", "backslashreplace")
    rid = record.get("id")
    if isinstance(rid, str) and rid != "":
        # A JSON "\ud800" escape decodes to a lone surrogate, which nothing downstream can
        # encode (the router's hash, the output): escape it like a key's undecodable bytes.
        return rid.encode("utf-8", "backslashreplace").decode()
    if isinstance(rid, int) and not isinstance(rid, bool):
        return str(rid)
    return "/".join(map(str, coordinates(msg)))


def event_ts(msg: InputMessage, fallback_s: float) -> int:
    """The message timestamp (ms), or `fallback_s` when the producer set none."""
    kind, ts = msg.timestamp()
    return int(ts) if kind != TIMESTAMP_NOT_AVAILABLE else int(fallback_s * 1000)
