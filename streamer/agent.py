"""The agent loop: consume -> decode -> route -> infer -> produce -> commit.

One agent is one consumer-group member; run more processes to scale out. Offsets commit
only after every record a batch produced (outputs, lake entries, dead letters) is
acknowledged by the brokers, so a crash repeats work but never loses it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    Message,
    Producer,
    TopicPartition,
)

from streamer.batching import MicroBatcher
from streamer.codecs import DecodedBatch, EncodeError, decode_batch, make_decoder, make_encoder
from streamer.commits import InFlight, InFlightBatch
from streamer.config import Topology
from streamer.errors import DeliveryFailed, StreamerError
from streamer.inference import Scorer, VariantScores
from streamer.kafka.clients import (
    KafkaBatchSource,
    make_consumer,
    make_producer,
    missing_topics,
    produce,
    retrying,
    wait_for_cluster,
)
from streamer.metrics import Metrics, MetricsServer, observe_many
from streamer.models import Model, load_variant_models
from streamer.routing import Router
from streamer.sinks import Headers, dead_letter_headers, lake_record

log = logging.getLogger("streamer.agent")

CONNECT_TIMEOUT_S = 30.0
"""How long `run` waits for the cluster before it gives up with exit code 1."""
DRAIN_TIMEOUT_S = 60.0
"""How long shutdown waits for in-flight records to be acknowledged."""
COMMIT_RETRY_S = 10.0
"""How long a hand-over or shutdown commit is retried (coordinator moves take seconds)."""
LAG_INTERVAL_S = 2.0
"""How often streamer_consumer_lag is refreshed (from librdkafka's cached watermarks)."""


@dataclass
class AgentStats:
    """What one agent did; returned by `run` and printed by the demo."""

    consumed: int = 0
    served: int = 0
    dead_letters: int = 0
    batches: int = 0
    largest_batch: int = 0
    first_output_at: float | None = None
    last_output_at: float | None = None
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)


class Agent:
    """Serves one topology until `stop()`; see the module docstring for the guarantees."""

    def __init__(
        self,
        topology: Topology,
        models: Mapping[str, Model] | None = None,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        """`models` are the variants' loaded models (from `validate`); loaded here if None."""
        if topology.guarantee == "exactly_once":
            raise StreamerError(
                f"{topology.source}: guarantee: exactly_once is not available in this version; "
                "use at_least_once"
            )
        if models is None:
            models, errors = load_variant_models(topology)
            if errors:
                raise next(iter(errors.values()))
        self.topology = topology
        self.metrics = Metrics()
        self.models = dict(models)
        self.router = Router(topology.served_weights())
        self.scorer = Scorer(self.models, self.router, [v.name for v in topology.shadows])
        self.decoder = make_decoder(topology.input.format, topology.input.schema_)
        self.output_encoder = make_encoder(topology.output.format, topology.output.schema_)
        self.lake_encoder = make_encoder(topology.lake.format, topology.lake.schema_)
        self.stats = AgentStats()
        self._connect_timeout_s = connect_timeout_s
        self._stop = threading.Event()
        self._in_flight = InFlight()
        self._assigned: set[tuple[str, int]] = set()
        self._served_to: dict[tuple[str, int], int] = {}
        """Per input partition, the offset after the last event whose batch was acknowledged."""
        self._joined = False
        self._heartbeat = time.monotonic()
        self._lag_updated = 0.0
        self.metrics_port: int | None = None
        """The port /metrics is served on once running (None when disabled)."""
        for name, model in self.models.items():
            self.metrics.model_info.labels(name, model.version, model.sha256).set(1)
        for name, weight in self.router.weights.items():
            self.metrics.variant_weight.labels(name).set(weight)

    @property
    def assigned(self) -> list[tuple[str, int]]:
        """The (topic, partition)s this agent currently owns."""
        return sorted(self._assigned)

    def stop(self) -> None:
        """Ask the loop to finish its batch, flush, commit and return (signal-safe)."""
        self._stop.set()

    def run(self) -> AgentStats:
        """Consume and serve until `stop()`; raises DeliveryFailed if records were lost."""
        t = self.topology
        admin = wait_for_cluster(t.kafka, self._connect_timeout_s, self._stop.is_set)
        if self._stop.is_set():  # stopped before the cluster answered: nothing to drain
            return self.stats
        missing = missing_topics(admin, t.agent_topics(), self._connect_timeout_s)
        if missing:
            raise StreamerError(
                f"{t.source}: topic(s) {', '.join(missing)} do not exist; "
                f"create them with `streamer topics create {t.source}`"
            )
        if t.routing.strategy == "bandit":
            log.warning(
                "routing.strategy bandit: serving the configured weights; this version "
                "does not read %s yet",
                t.routing.control_topic,
            )
        server = self._start_metrics_server()
        log.info("cluster settings: %s", t.kafka.redacted())
        consumer = make_consumer(t.kafka, t.group_id)
        producer = make_producer(t.kafka, {})
        consumer.subscribe(
            [t.input.topic],
            on_assign=self._on_assign,
            on_revoke=self._revoker(consumer, producer),
            on_lost=self._on_lost,
        )
        batcher = MicroBatcher(
            KafkaBatchSource(consumer), t.batching.max_batch_size, t.batching.max_wait_ms
        )
        try:
            while not self._stop.is_set():
                self._heartbeat = time.monotonic()
                self._wait_for_room(consumer, producer)
                messages = batcher.next_batch()
                if messages:
                    self._serve(messages, producer)
                producer.poll(0)
                self._commit(consumer, asynchronous=True)
                self._update_lag(consumer)
        finally:
            self._drain(consumer, producer)
            if server is not None:
                server.stop()
        return self.stats

    def _serve(self, messages: list[Message], producer: Producer) -> None:
        """One batch: decode, dead-letter the bad, score the good, produce everything."""
        fetched_at = time.time()
        n = len(messages)
        self.metrics.events_consumed.inc(n)
        self.metrics.batch_size.observe(n)
        self.stats.consumed += n
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, n)
        batch = self._in_flight.open(coordinates(m) for m in messages)
        decoded = decode_batch([m.value() for m in messages], self.decoder, self.topology.features)
        for index, err in decoded.rejected:
            self._dead_letter(producer, batch, messages[index], err.reason, err.detail)
        if decoded.ok:
            self._score_and_publish(producer, batch, messages, decoded, fetched_at)

    def _score_and_publish(
        self,
        producer: Producer,
        batch: InFlightBatch,
        messages: list[Message],
        decoded: DecodedBatch,
        fetched_at: float,
    ) -> None:
        good = [messages[i] for i in decoded.ok]
        ids = [_event_id(m, r) for m, r in zip(good, decoded.records, strict=True)]
        ts_events = [_event_ts(m, fetched_at) for m in good]
        scores = self.scorer.score(decoded.features, ids)
        now = time.time()
        ts_predicted = int(now * 1000)
        server: dict[int, tuple[VariantScores, int]] = {}
        for s in scores:
            self.metrics.inference_seconds.labels(s.variant).observe(s.seconds)
            self.metrics.predictions.labels(s.variant, str(s.shadow).lower()).inc(len(s.rows))
            if not s.shadow:
                server.update((row, (s, j)) for j, row in enumerate(s.rows.tolist()))

        served: dict[int, dict[str, Any]] = {}
        for row, msg in enumerate(good):  # input order keeps each partition's outputs in order
            s, j = server[row]
            if not s.finite[j]:
                detail = f"variant {s.variant} returned NaN or infinity"
                self._dead_letter(producer, batch, msg, "non_finite_output", detail)
                continue
            out = s.record(j, ids[row], ts_events[row], ts_predicted)
            try:
                value = self.output_encoder.encode(out)
            except EncodeError as exc:
                self._dead_letter(producer, batch, msg, "encode_failed", str(exc))
                continue
            self._produce(producer, batch, self.topology.output.topic, msg.key(), value)
            served[row] = out
        self.stats.served += len(served)
        event_ms = np.fromiter((ts_events[row] for row in served), dtype=np.float64)
        observe_many(self.metrics.end_to_end_seconds, np.maximum(now - event_ms / 1000.0, 0.0))

        latency_ms = round((now - fetched_at) * 1000.0, 3)
        for s in scores:
            for j, row in enumerate(s.rows.tolist()):
                if s.shadow:
                    out = s.record(j, ids[row], ts_events[row], ts_predicted)
                elif row in served:
                    out = served[row]
                else:
                    continue  # dead-lettered: the lake holds only what was served or shadowed
                record = lake_record(
                    out,
                    shadow=s.shadow,
                    features=decoded.values[row],
                    latency_ms=latency_ms,
                    topology=self.topology.name,
                    propensity=s.propensity,
                )
                self._write_lake(producer, batch, good[row], record)
        if self.stats.first_output_at is None:
            self.stats.first_output_at = now
        self.stats.last_output_at = now

    def _write_lake(
        self, producer: Producer, batch: InFlightBatch, msg: Message, record: dict[str, Any]
    ) -> None:
        try:
            value = self.lake_encoder.encode(record)
        except EncodeError as exc:
            # The event itself was handled; a lake record the lake format cannot hold is
            # counted and logged, not dead-lettered (the dead-letter topic holds events).
            self.metrics.dead_letters.labels("lake_encode_failed").inc()
            log.warning(
                "lake record for %s (%s) not written: %s", record["id"], record["variant"], exc
            )
            return
        self._produce(producer, batch, self.topology.lake.topic, msg.key(), value)

    def _dead_letter(
        self, producer: Producer, batch: InFlightBatch, msg: Message, reason: str, detail: str
    ) -> None:
        headers = dead_letter_headers(reason, detail, *coordinates(msg))
        self._produce(
            producer,
            batch,
            self.topology.dead_letter.topic,
            msg.key(),
            msg.value(),
            headers=headers,
        )
        self.metrics.dead_letters.labels(reason).inc()
        self.stats.dead_letters += 1
        self.stats.dead_letter_reasons[reason] = self.stats.dead_letter_reasons.get(reason, 0) + 1

    def _produce(
        self,
        producer: Producer,
        batch: InFlightBatch,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        headers: Headers | None = None,
    ) -> None:
        produce(producer, topic, value, key, headers=headers, on_delivery=batch.on_delivery)
        batch.sent()

    def _wait_for_room(self, consumer: Consumer, producer: Producer) -> None:
        while len(self._in_flight) >= self.topology.batching.max_in_flight_batches:
            producer.poll(0.01)
            self._commit(consumer, asynchronous=True)

    def _commit(self, consumer: Consumer, *, asynchronous: bool) -> None:
        """Commit every fully acknowledged batch; then fail loudly if a delivery failed.

        Steady state commits asynchronously (a lost commit is superseded by the next one);
        before a hand-over or exit every served position is committed again synchronously,
        with retries, so a graceful stop repeats nothing.
        """
        fresh = self._in_flight.pop_committable()
        self._served_to.update(fresh)
        offsets = fresh if asynchronous else self._served_to
        owned = [
            TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in self._assigned
        ]
        if owned and asynchronous:
            consumer.commit(offsets=owned, asynchronous=True)
        elif owned:
            retrying(lambda: consumer.commit(offsets=owned, asynchronous=False), COMMIT_RETRY_S)
        self._raise_on_failures()

    def _raise_on_failures(self) -> None:
        failures = self._in_flight.failed()
        if failures:
            raise DeliveryFailed(
                f"{len(failures)} record(s) were not acknowledged (first: {failures[0]}); "
                "their input offsets stay uncommitted and will be served again"
            )

    def _drain(self, consumer: Consumer, producer: Producer) -> None:
        """Wait for in-flight records, commit what is acknowledged, leave the group."""
        try:
            remaining = producer.flush(DRAIN_TIMEOUT_S)
            self._commit(consumer, asynchronous=False)
            if remaining:
                raise DeliveryFailed(
                    f"{remaining} record(s) unacknowledged after {DRAIN_TIMEOUT_S:.0f}s; "
                    "their input offsets stay uncommitted and will be served again"
                )
        finally:
            consumer.close()

    def _revoker(
        self, consumer: Consumer, producer: Producer
    ) -> Callable[[Consumer, list[TopicPartition]], None]:
        def on_revoke(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
            # Hand partitions over with everything served so far committed, so the next
            # owner does not serve it again.
            producer.flush(DRAIN_TIMEOUT_S)
            self._commit(consumer, asynchronous=False)
            self._forget(partitions)

        return on_revoke

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned |= {(p.topic, p.partition) for p in partitions}
        self._joined = True
        log.info("assigned %s", sorted(p.partition for p in partitions))

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget(partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self._assigned.discard((p.topic, p.partition))
            self._served_to.pop((p.topic, p.partition), None)
            with contextlib.suppress(KeyError):  # never measured
                self.metrics.consumer_lag.remove(str(p.partition))

    def _update_lag(self, consumer: Consumer) -> None:
        now = time.monotonic()
        if now - self._lag_updated < LAG_INTERVAL_S or not self._assigned:
            return
        self._lag_updated = now
        for tp in consumer.position([TopicPartition(t, p) for t, p in self._assigned]):
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset >= 0:
                self.metrics.consumer_lag.labels(str(tp.partition)).set(high - tp.offset)

    def _start_metrics_server(self) -> MetricsServer | None:
        port = self.topology.metrics.port
        if port is None:
            return None
        try:
            server = MetricsServer(self.metrics, port, self._healthy, lambda: self._joined)
        except OSError as exc:
            raise StreamerError(
                f"{self.topology.source}: metrics.port: cannot listen on {port}: {exc.strerror}"
            ) from None
        self.metrics_port = server.port
        return server.start()

    def _healthy(self) -> bool:
        stalled_after = 30.0 + self.topology.batching.max_wait_ms / 1000.0
        return time.monotonic() - self._heartbeat < stalled_after


def coordinates(msg: Message) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed message (never None once consumed)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset


def _event_id(msg: Message, record: Mapping[str, Any]) -> str:
    """The input key as text; else the event's `id` field; else its Kafka coordinates."""
    key = msg.key()
    if key:
        return key.decode("utf-8", "backslashreplace")
    rid = record.get("id")
    if isinstance(rid, str | int) and not isinstance(rid, bool) and rid != "":
        return str(rid)
    return "/".join(map(str, coordinates(msg)))


def _event_ts(msg: Message, fallback_s: float) -> int:
    kind, ts = msg.timestamp()
    return int(ts) if kind != TIMESTAMP_NOT_AVAILABLE else int(fallback_s * 1000)
