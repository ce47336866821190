"""`streamer controller`: join the lake with delayed rewards, reweight the variants live.

    lake (served records) ──┐
                            ├─► per partition: Ledger (pending decisions, rewards, evidence)
    feedback (rewards) ─────┘     │ every second: evidence + offsets ──► checkpoint topic
                                  ▼
    owner of partition 0: every partition's evidence merged ─► policy ─► control topic

Controllers form a consumer group over the lake and feedback topics, which are
co-partitioned by id (same partition count, key = id): each process joins its own
partitions. Offsets are never committed to the group: each partition's checkpoint holds its
evidence *and* the offsets it includes, so a restart (or the next owner after a rebalance)
resumes exactly there, replaying one reward window to rebuild the pending decisions.

One consistent set of weights: the process that owns partition 0 publishes, from the sum of
every partition's evidence: its own partitions live, the others from their latest
checkpoints (at most a second old), each aged to the same moment. When it dies, partition 0
moves to another process after the group's session timeout, which publishes from then on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from streamer.bandit.ledger import Checkpoint, Ledger, LedgerSettings, Result, evidence_at
from streamer.bandit.policies import Evidence, weights
from streamer.codecs import make_decoder
from streamer.config import Topology
from streamer.control.record import ControlRecord, ControlRejected, parse
from streamer.control.topic import TopicReader
from streamer.errors import StreamerError
from streamer.kafka.clients import (
    make_consumer,
    make_producer,
    missing_topics,
    retrying,
    wait_for_cluster,
)
from streamer.metrics import ControllerMetrics, MetricsServer, serve_metrics

log = logging.getLogger("streamer.controller")

CHECKPOINT_INTERVAL_S = 1.0
"""How often each partition's evidence and offsets are checkpointed (when they changed)."""
WEIGHT_TOLERANCE = 0.005
"""A new control record is published only when some weight moves by more than this."""
SESSION_TIMEOUT_MS = 10_000
"""How soon the group notices a dead controller and moves its partitions (and, if it
published, the publishing) to another one."""
CONSUME_BATCH = 2000
EVALUATE_S = 0.2
"""How often new evidence is looked at; a record still waits for update_interval_s since
the previous one."""


@dataclass(frozen=True)
class ControllerStats:
    """What one controller process did (from its metrics)."""

    records: int
    rewards: dict[str, int]
    """Result -> count, over this process's partitions."""
    published: int


class Controller:
    """Runs one controller process of a topology until `stop()`."""

    def __init__(
        self,
        topology: Topology,
        *,
        connect_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        bandit = topology.bandit
        if bandit is None or topology.routing.control_topic is None:
            raise StreamerError(
                f"{topology.source}: bandit: the controller needs a bandit section and "
                "routing.control_topic"
            )
        if len(topology.served) < 2:
            raise StreamerError(
                f"{topology.source}: variants: the controller needs two served variants or more"
            )
        self.topology = topology
        self.bandit = bandit
        self.clock = clock
        self.metrics = ControllerMetrics()
        self.settings = LedgerSettings(
            variants=[v.name for v in topology.served],
            window_s=bandit.reward_window_s,
            default_reward=bandit.default_reward,
            reward=bandit.reward,
            max_pending=bandit.max_pending,
            decay=bandit.decay,
            decay_interval_s=bandit.update_interval_s,
        )
        self.owner = f"{socket.gethostname()}-{os.getpid()}"
        self._connect_timeout_s = connect_timeout_s
        self._decoder = make_decoder(topology.lake.format, topology.lake.schema_)
        self._rng = np.random.default_rng(bandit.seed)
        self._ledgers: dict[int, Ledger] = {}
        self._checkpoints: dict[int, Checkpoint] = {}
        """Partition -> its latest checkpoint on the topic (any owner's)."""
        self._written: dict[int, tuple[int, int, float]] = {}
        self._behind: dict[int, bool] = {}
        """Partition -> whether its feedback partition has unread records (last lag check)."""
        self._feedback_next: dict[int, int] = {}
        """Partition -> the next feedback offset to read (< 0: the end, when assigned)."""
        self._person: ControlRecord | None = None
        self._published: ControlRecord | None = None
        self._partitions = 0
        self._checkpointed_at = 0.0
        self._updated_at = 0.0
        self._published_at = 0.0
        self._evaluated: tuple[float, float] = (-1.0, 0.0)
        """(rewards counted, when) at the last evaluation of the policy."""
        self._heartbeat = time.monotonic()
        self._stop = threading.Event()
        self._producer_: Producer | None = None
        """Checkpoints and control records; exists while `run` runs."""
        assert topology.checkpoint_topic is not None
        self._checkpoint_reader = TopicReader(topology.kafka, topology.checkpoint_topic)
        self._control_reader = TopicReader(topology.kafka, topology.routing.control_topic)
        self.metrics_port: int | None = None

    def stop(self) -> None:
        """Finish the turn, checkpoint every partition, leave the group (signal-safe)."""
        self._stop.set()

    @property
    def stats(self) -> ControllerStats:
        m = self.metrics
        return ControllerStats(
            records=int(m.value("streamer_controller_records_total")),
            rewards={
                k: int(v)
                for k, v in m.by_label("streamer_controller_rewards_total", "result").items()
            },
            published=int(m.value("streamer_controller_control_records_total")),
        )

    @property
    def _producer(self) -> Producer:
        assert self._producer_ is not None, "only while running"
        return self._producer_

    @property
    def publishing(self) -> bool:
        """Whether this process owns partition 0, and so publishes the weights."""
        return 0 in self._ledgers

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> ControllerStats:
        t = self.topology
        bandit = self.bandit
        admin = wait_for_cluster(t.kafka, self._connect_timeout_s, self._stop.is_set)
        if self._stop.is_set():
            return self.stats
        assert t.routing.control_topic is not None and t.checkpoint_topic is not None
        needed = [t.lake.topic, bandit.feedback_topic, t.routing.control_topic, t.checkpoint_topic]
        missing = missing_topics(admin, needed, self._connect_timeout_s)
        if missing:
            raise StreamerError(
                f"{t.source}: topic(s) {', '.join(missing)} do not exist; "
                f"create them with `streamer topics create {t.source}`"
            )
        metadata = admin.list_topics(timeout=self._connect_timeout_s).topics
        lake_n = len(metadata[t.lake.topic].partitions)
        feedback_n = len(metadata[bandit.feedback_topic].partitions)
        if lake_n != feedback_n:
            raise StreamerError(
                f"{t.source}: bandit.feedback_topic: {bandit.feedback_topic} has {feedback_n} "
                f"partitions, {t.lake.topic} has {lake_n}; rewards join decisions by id only "
                "when both topics have the same partitions (co-partitioned by key)"
            )
        self._partitions = lake_n
        if t.routing.strategy == "static":
            log.warning("routing.strategy is static: agents ignore the controller's records")
        server = self._start_metrics_server()
        self._producer_ = make_producer(t.kafka, {"linger.ms": 5})
        checkpoints, control = self._checkpoint_reader, self._control_reader
        consumer = make_consumer(
            t.kafka,
            t.controller_group_id,
            overrides={
                "partition.assignment.strategy": "range",  # same partitions of both topics
                "session.timeout.ms": SESSION_TIMEOUT_MS,
                "isolation.level": "read_committed",
            },
        )
        try:
            for reader in (checkpoints, control):
                reader.start(self._connect_timeout_s)
                self._read(reader, self._connect_timeout_s)
            consumer.subscribe(
                [t.lake.topic, bandit.feedback_topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            log.info(
                "controller %s: %s policy over %s",
                self.owner,
                bandit.policy,
                ", ".join(self.settings.variants),
            )
            while not self._stop.is_set():
                self._heartbeat = time.monotonic()
                self._serve(consumer.consume(CONSUME_BATCH, 0.1))
                self._read(checkpoints, 0.0)
                self._read(control, 0.0)
                self._producer.poll(0)
                now = self.clock()
                if now - self._checkpointed_at >= CHECKPOINT_INTERVAL_S:
                    self._checkpointed_at = now
                    self._checkpoint(list(self._ledgers), now)
                    self._lag(consumer)
                if now - self._updated_at >= min(EVALUATE_S, bandit.update_interval_s):
                    self._updated_at = now
                    self._update(now)
            self._checkpoint(list(self._ledgers), self.clock(), flush=True)
        finally:
            consumer.close()
            checkpoints.close()
            control.close()
            self._producer_ = None  # its threads end with it
            if server is not None:
                server.stop()
        return self.stats

    def _serve(self, messages: list[Message]) -> None:
        lake_topic = self.topology.lake.topic
        counted = {"lake": 0, "feedback": 0}
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("controller consumer: %s", err.str())
                continue
            ledger = self._ledgers.get(msg.partition() or 0)
            if ledger is None:
                continue  # revoked meanwhile
            t = msg.timestamp()[1] / 1000.0
            offset = msg.offset() or 0
            if msg.topic() == lake_topic:
                counted["lake"] += 1
                self._decision(ledger, msg.value(), t, offset)
            else:
                counted["feedback"] += 1
                try:
                    raw = orjson.loads(msg.value() or b"")
                except orjson.JSONDecodeError:
                    raw = None
                ledger.feedback(raw, t, offset)
                self._feedback_next[msg.partition() or 0] = offset + 1
        for topic, n in counted.items():
            if n:
                self.metrics.records.labels(topic).inc(n)

    def _decision(self, ledger: Ledger, value: bytes | None, t: float, offset: int) -> None:
        try:
            record = self._decoder.decode(value)
            if record.get("shadow"):
                ledger.passed(offset)
                return  # shadows were never served: not a decision
            ledger.decision(
                str(record["id"]), str(record["variant"]), float(record["propensity"]), t, offset
            )
        except Exception:  # a lake record we cannot read is skipped, never fatal
            ledger.passed(offset)
            log.debug("unreadable lake record at offset %d", offset, exc_info=True)

    # -- partitions ----------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The previous owners checkpointed on revoke: read up to them before resuming.
        self._read(self._checkpoint_reader, self._connect_timeout_s)
        numbers = sorted({p.partition for p in partitions})
        now = self.clock()
        starts: dict[int, float] = {}
        for p in numbers:
            checkpoint = self._checkpoints.get(p)
            self._ledgers[p] = Ledger(self.settings, checkpoint, self._counted)
            as_of = checkpoint.as_of if checkpoint is not None else now
            # A reward waits up to a window for its decision, which waits a window for its
            # reward: two windows back rebuild everything still open at the checkpoint.
            starts[p] = as_of - 2 * self.settings.window_s
        wanted = [
            TopicPartition(tp.topic, tp.partition, int(starts[tp.partition] * 1000))
            for tp in partitions
        ]
        found = {
            (tp.topic, tp.partition): tp.offset
            for tp in consumer.offsets_for_times(wanted, self._connect_timeout_s)
        }
        positioned = []
        for tp in partitions:
            ledger = self._ledgers[tp.partition]
            resume = (
                ledger.lake_offset
                if tp.topic == self.topology.lake.topic
                else (ledger.feedback_offset)
            )
            at = found.get((tp.topic, tp.partition), -1)
            if at < 0:
                # Nothing since then: start where the checkpoint ends, else at today's end
                # as a number (OFFSET_END would skip what is written before fetching starts).
                at = resume if resume > 0 else self._end(consumer, tp)
            elif resume > 0:
                at = min(at, resume)
            positioned.append(TopicPartition(tp.topic, tp.partition, at))
        starting = {(tp.topic, tp.partition): tp.offset for tp in positioned}
        for p in numbers:
            self._ledgers[p].replay_from(
                max(starting[(self.topology.lake.topic, p)], 0),
                max(starting[(self.bandit.feedback_topic, p)], 0),
            )
        for tp in positioned:
            if tp.topic == self.bandit.feedback_topic:
                self._feedback_next[tp.partition] = tp.offset
        consumer.assign(positioned)
        log.info("assigned partitions %s (publishing: %s)", numbers, 0 in numbers)

    def _end(self, consumer: Consumer, tp: TopicPartition) -> int:
        _, high = retrying(
            lambda: consumer.get_watermark_offsets(tp, timeout=self._connect_timeout_s),
            self._connect_timeout_s,
        )
        return int(high)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = sorted({p.partition for p in partitions} & set(self._ledgers))
        self._checkpoint(numbers, self.clock(), flush=True)
        self._forget(numbers)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget(sorted({p.partition for p in partitions}))  # another owner has them

    def _forget(self, numbers: list[int]) -> None:
        for p in numbers:
            for topic in (self.topology.lake.topic, self.bandit.feedback_topic):
                with contextlib.suppress(KeyError):  # never measured
                    self.metrics.lag.remove(topic, str(p))
            self._ledgers.pop(p, None)
            self._written.pop(p, None)
            self._behind.pop(p, None)
            self._feedback_next.pop(p, None)

    # -- checkpoints -----------------------------------------------------------------------------
    def _checkpoint(self, numbers: list[int], now: float, *, flush: bool = False) -> None:
        topic = self.topology.checkpoint_topic
        assert topic is not None
        pending = 0
        for p in numbers:
            ledger = self._ledgers.get(p)
            if ledger is None:
                continue
            checkpoint = ledger.checkpoint(self._time(p, now))
            pending += len(ledger.pending)
            mark = (
                checkpoint.lake_offset,
                checkpoint.feedback_offset,
                sum(checkpoint.results.values()),
            )
            if self._written.get(p) == mark and not flush:
                continue  # nothing new since the last one
            value = {
                "topology": self.topology.name,
                "partition": p,
                "owner": self.owner,
                **checkpoint.to_dict(),
            }
            self._producer.produce(topic, orjson.dumps(value), self._key(p).encode())
            self._checkpoints[p] = checkpoint
            self._written[p] = mark
            self.metrics.checkpoints.inc()
        self.metrics.pending.set(pending)
        if flush and self._producer.flush(self._connect_timeout_s):
            log.warning("checkpoints not acknowledged; the next owner replays a little more")

    def _key(self, partition: int) -> str:
        return f"{self.topology.name}/{partition}"

    def _read(self, reader: TopicReader, timeout_s: float) -> None:
        """Apply what arrived on a followed topic; with a timeout, read to its end first."""
        entries = list(reader.read_to_end(timeout_s)) if timeout_s > 0 else reader.poll(0.0)
        for entry in entries:
            if reader.topic == self.topology.checkpoint_topic:
                self._on_checkpoint(entry.key, entry.value)
            elif entry.key == self.topology.name:
                self._on_control(entry.value)

    def _on_checkpoint(self, key: str, value: bytes | None) -> None:
        prefix = f"{self.topology.name}/"
        if not key.startswith(prefix):
            return
        try:
            partition = int(key[len(prefix) :])
            if value is None:  # deleted: that partition starts afresh
                self._checkpoints.pop(partition, None)
                return
            self._checkpoints[partition] = Checkpoint.from_dict(orjson.loads(value))
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            log.warning("unreadable checkpoint %s ignored", key)

    def _on_control(self, value: bytes | None) -> None:
        try:
            record = parse(value) if value is not None else None
        except ControlRejected:
            return  # agents reject it too
        if record is None:
            self._person = None  # deleted: the topology file's weights again
        elif record.by_person:
            self._person = record
        else:
            self._published = record
            for name, w in record.weights.items():
                self.metrics.weight.labels(name).set(w)

    def _counted(self, variant: str, result: Result, _reward: float | None) -> None:
        self.metrics.rewards.labels(variant, result.value).inc()

    def _lag(self, consumer: Consumer) -> None:
        assigned = consumer.assignment()
        if not assigned:
            return
        for tp in assigned:
            if tp.topic == self.bandit.feedback_topic:
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                read_to = self._feedback_next.get(tp.partition, -1)
                self._behind[tp.partition] = 0 <= read_to < high
        for tp in consumer.position(assigned):
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset >= 0:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(high - tp.offset)

    def _time(self, partition: int, now: float) -> float:
        """The clock that closes a partition's windows: now, unless its rewards are still
        being caught up (a backlog, a restart): then as far as they have been read, so no
        window closes on a reward that is there but not read yet."""
        ledger = self._ledgers[partition]
        if self._behind.get(partition, False):
            return min(now, max(ledger.feedback_time, ledger.restored_as_of))
        return now

    # -- weights ---------------------------------------------------------------------------------
    def merged(self, now: float) -> tuple[dict[str, Evidence], float]:
        """Every partition's evidence aged to `now` and summed, and the rewards counted."""
        total = {name: Evidence() for name in self.settings.variants}
        counted = 0.0
        for p in range(self._partitions):
            ledger = self._ledgers.get(p)
            if ledger is not None:
                ledger.expire(self._time(p, now))
                evidence, tallies = ledger.evidence, ledger.counted
            elif p in self._checkpoints:
                cp = self._checkpoints[p]
                evidence, tallies = evidence_at(cp, now, self.settings), cp.counted
            else:
                continue
            for name, e in evidence.items():
                if name in total:
                    total[name] = total[name].plus(e)
            counted += sum(c[0] for c in tallies.values())
        return total, counted

    def _update(self, now: float) -> None:
        """Publish new weights when there is new evidence (or an interval passed: decay),
        at most once per update_interval_s, as soon as the interval allows."""
        evidence, counted = self.merged(now)
        for name, e in evidence.items():
            self.metrics.pulls.labels(name).set(e.n)
            self.metrics.mean_reward.labels(name).set(e.mean)
        interval = self.bandit.update_interval_s
        if not self.publishing or counted < self.bandit.min_rewards:
            return
        if now - self._published_at < interval:
            return
        last_counted, last_at = self._evaluated
        if counted == last_counted and now - last_at < interval:
            return  # nothing new to learn from
        self._evaluated = (counted, now)
        person = self._person
        disabled = list(person.disabled) if person is not None else []
        enabled = {n: e for n, e in evidence.items() if n not in disabled}
        if not enabled:
            return
        chosen = weights(
            self.bandit.policy,
            enabled,
            reward=self.bandit.reward,
            min_weight=self.bandit.min_weight,
            epsilon=self.bandit.epsilon,
            rng=self._rng,
        )
        new = {n: chosen.get(n, 0.0) for n in self.settings.variants}
        current = self._published.weights if self._published is not None else None
        if current is not None and all(
            abs(current.get(n, 0.0) - w) <= WEIGHT_TOLERANCE for n, w in new.items()
        ):
            return
        self._publish(new, evidence, person, now)

    def _publish(
        self,
        new: Mapping[str, float],
        evidence: Mapping[str, Evidence],
        person: ControlRecord | None,
        now: float,
    ) -> None:
        t = self.topology
        assert t.routing.control_topic is not None
        total = sum(new.values())
        shares = {n: w / total for n, w in new.items()}
        reason = "; ".join(
            f"{n}: {e.n:.0f} rewards, mean {e.mean:.4f} -> {shares[n]:.3f}"
            for n, e in evidence.items()
        )
        record = ControlRecord(
            weights=shares,
            policy=self.bandit.policy,
            ts=int(now * 1000),
            reason=reason,
            disabled=list(person.disabled) if person is not None else [],
            versions=dict(person.versions) if person is not None else {},
            source="controller",
            stats={n: {"n": e.n, "mean": e.mean, "total": e.total} for n, e in evidence.items()},
        )
        self._producer.produce(t.routing.control_topic, record.to_json(), t.name.encode())
        self._published = record
        self._published_at = now
        self.metrics.control_records.inc()
        for name, w in shares.items():
            self.metrics.weight.labels(name).set(w)
        log.info("published weights: %s", reason)

    # -- health ------------------------------------------------------------------------------------
    def _start_metrics_server(self) -> MetricsServer | None:
        server = serve_metrics(
            self.metrics,
            self.bandit.metrics_port,
            self.topology.metrics.host,
            healthy=self._healthy,
            ready=self._readiness,
            where=f"{self.topology.source}: bandit.metrics_port",
        )
        self.metrics_port = server.port if server is not None else None
        return server

    def _healthy(self) -> bool:
        return time.monotonic() - self._heartbeat < 30.0

    def _readiness(self) -> str | None:
        return None if self._ledgers else "waiting for partitions"
