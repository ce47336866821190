"""The agent loop: consume -> decode -> route -> infer -> produce -> commit.

One agent is one consumer-group member; run more processes to scale out. What a batch
produces is decided by `assembly` (pure), published and committed by a `Committer` (here
at-least-once: offsets commit only after every record of the batch is acknowledged, so a
crash repeats work but never loses it). A batch whose serving raised is never committed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from streamer.assembly import (
    Assembled,
    Destinations,
    InputMessage,
    Kind,
    Outgoing,
    assemble,
    coordinates,
    dead_letter,
)
from streamer.batching import MicroBatcher
from streamer.codecs import make_decoder, make_encoder
from streamer.commits import AtLeastOnce, ClientsLost, Committer, Rescue
from streamer.config import Topology
from streamer.control.live import LiveControl, RecentRows
from streamer.drift import Drift
from streamer.errors import BatchFailed, DeliveryFailed, StreamerError
from streamer.exactly_once import ExactlyOnce, transactional_id
from streamer.inference import ShadowRunner
from streamer.kafka.admin import PRODUCER_MAX_BYTES, record_limits
from streamer.kafka.clients import (
    KafkaBatchSource,
    flush_log_repeats,
    make_admin,
    make_consumer,
    make_producer,
    missing_topics,
    reaches_cluster,
    wait_for_cluster,
)
from streamer.metrics import Metrics, MetricsServer, observe_many, serve_metrics
from streamer.models import Model, first_line, load_variant_models
from streamer.records import Reason
from streamer.variants import Variants

log = logging.getLogger("streamer.agent")

CONNECT_TIMEOUT_S = 30.0
"""How long `run` waits for the cluster before it gives up with exit code 1."""
DRAIN_TIMEOUT_S = 60.0
"""How long shutdown waits for in-flight records to be acknowledged."""
LAG_INTERVAL_S = 2.0
"""How often streamer_consumer_lag is refreshed (from librdkafka's cached watermarks)."""
READY_INTERVAL_S = 5.0
"""How often the agent asks the cluster whether its input topic is there (for /readyz)."""
STALLED_AFTER_S = 30.0
"""A loop that has not turned for this long (plus max_wait_ms) is unhealthy (/healthz)."""


STUCK_CHECK_S = 10.0
"""How long the agent waits for progress (a committable batch while batches are in flight,
an assignment while it has none) before it asks whether its clients still reach Kafka."""
MAX_RECREATES = 5
RECREATE_WINDOW_S = 120.0
"""More client recreations than MAX_RECREATES within the window stop the agent: something
keeps taking them away (two agents sharing a transactional id fence each other forever)."""
STUCK_CHECKS = 2
"""Failed checks in a row (while a fresh client reaches the cluster) before the clients are
recreated: one failure can be a client still in its reconnect backoff after an outage."""


class _ClientWatchdog:
    """Finds clients that librdkafka has left without brokers (see `Agent._session`)."""

    def __init__(
        self,
        topology: Topology,
        committer: Committer,
        consumer: Consumer,
        producer: Producer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topology = topology
        self.clock = clock
        self.committer = committer
        self.clients: list[tuple[str, Consumer | Producer, str]] = [
            ("consumer", consumer, topology.input.topic),
            ("producer", producer, topology.output.topic),
        ]
        self.checked_at = 0.0
        self.failed = 0

    def check(self) -> None:
        """Raise ClientsLost after STUCK_CHECKS failed checks in a row."""
        now = self.clock()
        c = self.committer
        waiting = c.in_flight > 0 or not c.assigned
        if not waiting or now - max(c.progress_at, self.checked_at) < STUCK_CHECK_S:
            return
        self.checked_at = now
        t = self.topology
        # A fresh client first: while the cluster itself is away there is nothing to fix.
        if not reaches_cluster(make_admin(t.kafka, quiet=True), t.input.topic):
            self.failed = 0
            return
        cut_off = [
            name for name, client, topic in self.clients if not reaches_cluster(client, topic)
        ]
        if not cut_off:
            self.failed = 0
            return
        self.failed += 1
        log.warning(
            "no progress for %.0fs: the %s cannot reach the cluster (check %d of %d)",
            now - c.progress_at,
            " and ".join(cut_off),
            self.failed,
            STUCK_CHECKS,
        )
        if self.failed >= STUCK_CHECKS:
            raise ClientsLost(f"the {' and '.join(cut_off)} lost every broker")


@dataclass(frozen=True)
class AgentStats:
    """What one agent did (read from its metrics); returned by `run`, shown by the demo."""

    consumed: int
    served: int
    """Events whose output is acknowledged."""
    dead_letters: int
    """Events whose dead letter is acknowledged."""
    batches: int
    largest_batch: int
    dead_letter_reasons: dict[str, int]
    first_output_at: float | None
    last_output_at: float | None


class Agent:
    """Serves one topology until `stop()`; see the module docstring for the guarantees."""

    def __init__(
        self,
        topology: Topology,
        models: Mapping[str, Model] | None = None,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
    ) -> None:
        """`models` are the variants' loaded models (from `validate`); loaded here if None."""
        if models is None:
            loaded = load_variant_models(topology)
            if loaded.errors:
                raise next(iter(loaded.errors.values()))
            models = loaded.models
        self.topology = topology
        self.metrics = Metrics()
        self.models = dict(models)
        """The models the agent starts with (live control swaps them while it serves)."""
        self.variants = Variants(topology, models, self.metrics)
        self.recent = RecentRows(len(topology.features))
        self.drift = Drift.for_topology(topology, models, self.metrics)
        """Drift gauges against `drift.profile` (None without one)."""
        self._transactional_id = transactional_id(topology.group_id)
        self.shadows = ShadowRunner(
            None if (ms := topology.batching.shadow_budget_ms) is None else ms / 1000.0
        )
        self.decoder = make_decoder(topology.input.format, topology.input.schema_)
        self._connect_timeout_s = connect_timeout_s
        self._drain_timeout_s = drain_timeout_s
        self._stop = threading.Event()
        self._joined = False
        self._unready: str | None = None
        self._assigned: set[tuple[str, int]] = set()
        self._heartbeat = time.monotonic()
        self._lag_updated = 0.0
        self._ready_checked = 0.0
        self._largest_batch = 0
        self._first_output_at: float | None = None
        self._last_output_at: float | None = None
        self.metrics_port: int | None = None
        """The port /metrics is served on once running (None when disabled)."""

    @property
    def assigned(self) -> list[tuple[str, int]]:
        """The (topic, partition)s this agent currently owns."""
        return sorted(self._assigned)

    @property
    def stats(self) -> AgentStats:
        m = self.metrics
        reasons = m.by_label("streamer_dead_letters_total", "reason")
        return AgentStats(
            consumed=int(m.value("streamer_events_consumed_total")),
            served=int(m.value("streamer_predictions_total", shadow="false")),
            dead_letters=int(sum(reasons.values())),
            batches=int(m.value("streamer_batch_size_count")),
            largest_batch=self._largest_batch,
            dead_letter_reasons={r: int(n) for r, n in reasons.items() if n},
            first_output_at=self._first_output_at,
            last_output_at=self._last_output_at,
        )

    def stop(self) -> None:
        """Ask the loop to finish its batch, flush, commit and return (signal-safe)."""
        self._stop.set()

    def run(self) -> AgentStats:
        """Consume and serve until `stop()`; raises DeliveryFailed if records were lost and
        BatchFailed if serving a batch raised (neither is committed)."""
        t = self.topology
        admin = wait_for_cluster(t.kafka, self._connect_timeout_s, self._stop.is_set)
        if self._stop.is_set():  # stopped before the cluster answered: nothing to drain
            return self.stats
        dest = self._destinations(admin)
        live = LiveControl(
            t, self.variants, self.models, self.metrics, self.recent, assigned=lambda: self.assigned
        )
        if live.needed:
            live.start(self._connect_timeout_s)
        server = self._start_metrics_server()
        if server is not None:
            live.advertise_metrics(t.metrics.host, server.port)
        log.info("cluster settings: %s", t.kafka.redacted())
        recreated: list[float] = []
        try:
            while not self._stop.is_set():
                try:
                    self._session(dest)
                except ClientsLost as exc:
                    now = time.monotonic()
                    recreated = [at for at in recreated if now - at < RECREATE_WINDOW_S] + [now]
                    if len(recreated) > MAX_RECREATES:
                        raise StreamerError(
                            f"{t.source}: the Kafka clients had to be recreated "
                            f"{len(recreated)} times in {RECREATE_WINDOW_S:.0f}s (last: {exc}); "
                            "under exactly_once, is another agent running with the same "
                            "STREAMER_INSTANCE_ID?"
                        ) from None
                    log.warning(
                        "%s: recreating the Kafka clients; unacknowledged batches are served again",
                        exc,
                    )
        finally:
            live.stop()
            self.shadows.close()
            flush_log_repeats()
            if server is not None:
                server.stop()
        return self.stats

    def _session(self, dest: Destinations) -> None:
        """Serve with one consumer and one producer until `stop()` (then drain and commit),
        or until they are found cut off from a cluster that still answers (then drop them).

        librdkafka (2.10 and later) forgets every broker a Metadata response leaves out; a
        broker in controlled shutdown can answer with none, and a client that keeps that
        answer has nothing left to reconnect to (confluentinc/librdkafka#5301): its producer
        never delivers and its consumer never finds the group coordinator again.
        """
        t = self.topology
        producer = make_producer(t.kafka, self._producer_settings(dest), self._kafka_error)
        committer: Committer | None = None
        consumer = make_consumer(
            t.kafka, t.group_id, self._kafka_error, lambda e, p: self._on_commit(committer, e, p)
        )
        source = KafkaBatchSource(consumer)
        committer = self._committer(consumer, producer, source)
        consumer.subscribe(
            [t.input.topic],
            on_assign=lambda c, parts: self._on_assign(committer, c, parts),
            on_revoke=lambda c, parts: self._on_revoke(committer, c, parts),
            on_lost=lambda c, parts: self._on_lost(committer, c, parts),
        )
        batcher = MicroBatcher(source, t.batching.max_batch_size, t.batching.max_wait_ms)
        watchdog = _ClientWatchdog(t, committer, consumer, producer)

        def turn() -> None:
            # Waiting for acknowledgements while serving the consumer is a live loop.
            self._heartbeat = time.monotonic()
            watchdog.check()

        try:
            while not self._stop.is_set():
                self._heartbeat = time.monotonic()
                committer.wait_for_room(self._stop.is_set, turn)
                if self._stop.is_set():
                    break
                messages = batcher.next_batch()
                if messages:
                    self._serve(messages, committer, dest)
                else:  # idle: live-control changes still take effect (and show in gauges)
                    self.variants.snapshot()
                    if self.drift is not None:
                        self.drift.flush()
                committer.poll()
                self._housekeeping(consumer)
                watchdog.check()
        except ClientsLost:
            committer.discard()
            self._assigned = set()
            self._joined = False
            raise
        except BaseException:
            # The error that stopped the loop is the one to report; a drain that then also
            # fails is logged.
            try:
                committer.close(self._drain_timeout_s)
            except (DeliveryFailed, KafkaException) as exc:
                log.error("while stopping: %s", exc)
            raise
        committer.close(self._drain_timeout_s)

    def _producer_settings(self, dest: Destinations) -> dict[str, str | int]:
        t = self.topology
        settings: dict[str, str | int] = {}
        # A topic's max.message.bytes bounds whole record batches, and librdkafka cannot
        # split a refused batch: never batch more than the smallest topic takes.
        batch_bytes = min(dest.max_bytes.values(), default=PRODUCER_MAX_BYTES)
        if batch_bytes < PRODUCER_MAX_BYTES:
            settings["batch.size"] = batch_bytes
        if t.guarantee == "exactly_once":
            settings["transactional.id"] = self._transactional_id
            settings["transaction.timeout.ms"] = t.exactly_once.transaction_timeout_ms
        return settings

    def _committer(
        self, consumer: Consumer, producer: Producer, source: KafkaBatchSource
    ) -> Committer:
        """The delivery guarantee's owner of offsets and in-flight batches."""
        t = self.topology
        if t.guarantee == "exactly_once":
            return ExactlyOnce(
                consumer,
                producer,
                t.batching.max_in_flight_batches,
                self.metrics,
                commit_interval_s=t.exactly_once.commit_interval_ms / 1000.0,
                drain_timeout_s=self._drain_timeout_s,
                transactional_id=self._transactional_id,
                source=source,
            )
        return AtLeastOnce(
            consumer,
            producer,
            t.batching.max_in_flight_batches,
            self.metrics,
            drain_timeout_s=self._drain_timeout_s,
            source=source,
        )

    def _serve(self, messages: Sequence[Message], committer: Committer, dest: Destinations) -> None:
        """One batch: assemble what it produces, publish it into the committer."""
        fetched_at = time.time()
        # A rebalance between two fetches of this batch: what it took away, or handed back
        # to be fetched again, is not served twice.
        fetched = len(messages)
        messages = committer.fresh(messages)
        if len(messages) < fetched:
            log.debug(
                "%d of %d fetched messages served already or not owned",
                fetched - len(messages),
                fetched,
            )
        if not messages:
            return
        n = len(messages)
        self.metrics.events_consumed.inc(n)
        self.metrics.batch_size.observe(n)
        self._largest_batch = max(self._largest_batch, n)
        batch = None
        try:
            # Nothing is tracked before the batch is assembled: if assembly raises, the loop
            # stops here, so no later batch can commit past these offsets either.
            result = assemble(
                messages,
                self.decoder,
                self.variants.snapshot(),
                dest,
                self.shadows,
                fetched_at=fetched_at,
            )
            self.recent.keep(result.features)
            batch = committer.begin(messages, lambda: self._count(result), self._rescuer(result))
            committer.produce(batch, result.records)
        except Exception as exc:
            if batch is not None:
                committer.abandon(batch)
            log.debug("serving a batch raised", exc_info=True)
            topic, partition, offset = coordinates(messages[0])
            raise BatchFailed(
                f"serving a batch of {n} events (the first: {topic} partition {partition} "
                f"offset {offset}) raised {type(exc).__name__}: {first_line(exc)}; "
                "its offsets stay uncommitted and will be served again"
            ) from None
        self._observe(result)

    def _observe(self, result: Assembled) -> None:
        """Per-batch measurements, taken when the batch is produced."""
        m = self.metrics
        if self.drift is not None:
            self.drift.observe(result.features, result.scored)
        for variant, seconds in result.inference_seconds.items():
            m.inference_seconds.labels(variant).observe(seconds)
        for variant, n in result.shadowed.items():
            m.predictions.labels(variant, "true").inc(n)
        for variant, n in result.shadow_skipped.items():
            m.shadow_skipped.labels(variant).inc(n)
        for variant, n in result.shadow_failures.items():
            m.shadow_errors.labels(variant).inc(n)
            log.warning("shadow %s failed on %d event(s); served traffic is unaffected", variant, n)
        if result.event_ms.size:
            now = time.time()
            observe_many(m.end_to_end_seconds, now - result.event_ms / 1000.0)
            self._first_output_at = self._first_output_at or now
            self._last_output_at = now

    def _count(self, result: Assembled) -> None:
        """Counts of what is durable, taken when the batch's records are all acknowledged."""
        m = self.metrics
        for variant, n in result.served.items():
            if n:
                m.predictions.labels(variant, "false").inc(n)
        for reason, n in result.dead_letters.items():
            if n:
                m.dead_letters.labels(reason.value).inc(n)
        for why, n in result.lake_dropped.items():
            m.lake_dropped.labels(why).inc(n)

    def _rescuer(self, result: Assembled) -> Rescue:
        def rescue(record: Outgoing, msg: InputMessage, why: str) -> Outgoing | None:
            """A record the broker refused for its size: an output becomes a dead letter,
            a lake entry is dropped (its event was served)."""
            if record.kind is Kind.LAKE:
                result.lake_dropped["too_large"] += 1
                log.warning("lake record for %r not written: %s", record.key, why)
                return None
            result.served[record.variant] -= 1
            result.dead_letters[Reason.TOO_LARGE] += 1
            detail = f"{record.topic} refused the output: {why}"
            return dead_letter(
                self.topology.dead_letter.topic, msg, record.source, Reason.TOO_LARGE, detail
            )

        return rescue

    def _destinations(self, admin: AdminClient) -> Destinations:
        t = self.topology
        missing = missing_topics(
            admin, t.agent_topics() + t.control_topics(), self._connect_timeout_s
        )
        if missing:
            raise StreamerError(
                f"{t.source}: topic(s) {', '.join(missing)} do not exist; "
                f"create them with `streamer topics create {t.source}`"
            )
        return Destinations(
            topology=t.name,
            output_topic=t.output.topic,
            lake_topic=t.lake.topic if t.lake.enabled else None,
            dead_letter_topic=t.dead_letter.topic,
            output_encoder=make_encoder(t.output.format, t.output.schema_),
            lake_encoder=make_encoder(t.lake.format, t.lake.schema_),
            features=t.features,
            max_bytes=record_limits(admin, t, self._connect_timeout_s),
        )

    # -- group membership ------------------------------------------------------------------
    def _on_assign(self, committer: Committer, c: Consumer, parts: list[TopicPartition]) -> None:
        committer.on_assign(c, parts)
        self._assigned = set(committer.assigned)
        self._joined = True

    def _on_revoke(self, committer: Committer, c: Consumer, parts: list[TopicPartition]) -> None:
        committer.on_revoke(c, parts)
        self._forget(committer, parts)

    def _on_lost(self, committer: Committer, c: Consumer, parts: list[TopicPartition]) -> None:
        committer.on_lost(c, parts)
        self._forget(committer, parts)

    def _forget(self, committer: Committer, parts: list[TopicPartition]) -> None:
        self._assigned = set(committer.assigned)
        for p in parts:
            with contextlib.suppress(KeyError):  # never measured
                self.metrics.consumer_lag.remove(str(p.partition))

    def _on_commit(
        self, committer: Committer | None, err: KafkaError | None, parts: list[TopicPartition]
    ) -> None:
        if committer is not None:
            committer.on_commit(err, parts)

    # -- health ----------------------------------------------------------------------------
    def _kafka_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._unready = f"cannot reach Kafka: {err.str()}"

    def _housekeeping(self, consumer: Consumer) -> None:
        now = time.monotonic()
        if now - self._ready_checked >= READY_INTERVAL_S or (
            self._unready and now - self._ready_checked >= 1.0
        ):
            self._ready_checked = now
            self._unready = self._input_problem(consumer)
        if now - self._lag_updated >= LAG_INTERVAL_S and self._assigned:
            self._lag_updated = now
            self._update_lag(consumer)

    def _update_lag(self, consumer: Consumer) -> None:
        """streamer_consumer_lag per owned partition: the high watermark less the position,
        or, for a partition nothing was fetched from yet (just assigned, or stuck), less its
        committed offset (a lag that never shows would hide a stuck agent)."""
        positions = consumer.position([TopicPartition(t, p) for t, p in self._assigned])
        unknown = [tp for tp in positions if tp.offset < 0]
        if unknown:
            with contextlib.suppress(KafkaException):
                committed = {
                    tp.partition: tp.offset for tp in consumer.committed(unknown, timeout=1.0)
                }
                positions = [
                    TopicPartition(tp.topic, tp.partition, committed.get(tp.partition, -1))
                    if tp.offset < 0
                    else tp
                    for tp in positions
                ]
        for tp in positions:
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            if high < 0 and tp.offset >= 0:
                with contextlib.suppress(KafkaException):
                    _, high = consumer.get_watermark_offsets(tp, timeout=1.0)
            if high >= 0 and tp.offset >= 0:
                self.metrics.consumer_lag.labels(str(tp.partition)).set(high - tp.offset)

    def _input_problem(self, consumer: Consumer) -> str | None:
        topic = self.topology.input.topic
        try:
            metadata = consumer.list_topics(topic, timeout=1.0)
        except KafkaException as exc:
            return f"cannot reach Kafka: {exc.args[0] if exc.args else exc}"
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            why = found.error.str() if found is not None and found.error else "not found"
            return f"input topic {topic}: {why}"
        return None

    def _readiness(self) -> str | None:
        if not self._joined:
            return "joining the consumer group"
        return self._unready

    def _start_metrics_server(self) -> MetricsServer | None:
        t = self.topology
        server = serve_metrics(
            self.metrics,
            t.metrics.port,
            t.metrics.host,
            healthy=self._healthy,
            ready=self._readiness,
            where=f"{t.source}: metrics.port",
        )
        self.metrics_port = server.port if server is not None else None
        return server

    def _healthy(self) -> bool:
        stalled_after = STALLED_AFTER_S + self.topology.batching.max_wait_ms / 1000.0
        return time.monotonic() - self._heartbeat < stalled_after
