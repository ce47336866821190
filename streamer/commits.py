"""Commits: one owner for input offsets, rebalances and the records produced for them.

`Committer` is what the agent loop talks to: begin a batch, produce its records, poll,
wait for room, close. `AtLeastOnce` commits a batch's input offsets only after every record
it produced is acknowledged, and batches commit in the order they were consumed; a batch
whose serving raised is abandoned and never committed, nor is anything after it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streamer.assembly import InputMessage, Kind, Outgoing, coordinates
from streamer.errors import DeliveryFailed
from streamer.kafka.clients import KafkaBatchSource, produce, produce_many, retrying
from streamer.metrics import Metrics

log = logging.getLogger("streamer.commits")

COMMIT_RETRY_S = 10.0
"""How long a hand-over or shutdown commit is retried (coordinator moves take seconds)."""
ROOM_POLL_S = 0.05
"""Delivery-report wait per turn while the agent waits for an in-flight batch to finish."""
PAUSE_AFTER_S = 1.0
"""How long a wait for room lasts before the consumer is paused and served meanwhile."""
RECOMMIT_INTERVAL_S = 1.0
"""How often served offsets that the coordinator has not confirmed are committed again."""
CLOSE_LOST_TIMEOUT_S = 10.0
"""How long closing a consumer that lost every broker may take before it is left behind."""

Partition = tuple[str, int]
NOT_A_MEMBER = frozenset(
    {
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.FENCED_INSTANCE_ID,
    }
)
"""Commit errors that say the group has moved on without this member."""


class ClientsLost(Exception):
    """The consumer and producer cannot go on (cut off from a cluster that a fresh client
    reaches, or a transaction that can neither commit nor abort): the agent drops them and
    starts again with new ones from the committed offsets."""


Rescue = Callable[[Outgoing, InputMessage, str], Outgoing | None]
"""Given a record the broker refused for its size, its input message and the error: the
record to send instead (a dead letter), or None to drop it (a lake entry; counted)."""


@dataclass
class InFlightBatch:
    """Records produced for one input batch, and the input positions it covers."""

    next_offsets: dict[Partition, int]
    """Per input partition, the offset after the batch's last message (what to commit)."""
    messages: Sequence[InputMessage] = ()
    on_done: Callable[[], None] | None = None
    """Called once every record is acknowledged (when the batch becomes committable)."""
    rescue: Rescue | None = None
    outstanding: int = 0
    failures: list[str] = field(default_factory=list)
    abandoned: bool = False
    """Serving the batch raised: it must never be committed."""

    def sent(self) -> None:
        self.outstanding += 1

    def on_delivery(self, err: KafkaError | None, msg: Message | None) -> None:
        """confluent-kafka delivery callback: one call per produced record."""
        self.outstanding -= 1
        if err is not None:
            self.failures.append(f"{msg.topic() if msg is not None else '?'}: {err}")

    @property
    def done(self) -> bool:
        return self.outstanding == 0 and not self.failures and not self.abandoned


class Located(Protocol):
    """Where a consumed message comes from (confluent-kafka's `Message` has it)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...


M = TypeVar("M", bound=Located)


class Positions:
    """Per owned partition, the next offset a batch may serve.

    A batch is gathered over several fetches, and a rebalance can happen between two of
    them: a partition revoked and handed straight back is fetched again from its committed
    offset while the first copies are still in hand. Anything below the next offset was
    served already, and a partition this member does not own is not served at all."""

    def __init__(self) -> None:
        self._next: dict[Partition, int] = {}

    def take(self, messages: Sequence[M], owned: set[Partition]) -> list[M]:
        """The messages of `messages` that are owned and not served yet, in order; from
        now on they count as served (a batch that then fails stops the agent, or, under
        exactly_once, is aborted and rewound)."""
        keep: list[M] = []
        following = self._next
        for m in messages:
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            assert topic is not None and partition is not None and offset is not None
            tp = (topic, partition)
            if tp in owned and offset >= following.get(tp, -1):
                keep.append(m)
                following[tp] = offset + 1
        return keep

    def rewind(self, tp: Partition, offset: int) -> None:
        """Serve from `offset` again (an aborted transaction's events)."""
        self._next[tp] = offset

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Lost without a commit: whatever comes back for them is served."""
        for tp in partitions:
            self._next.pop(tp, None)


class InFlight:
    """Batches between produce and commit, oldest first."""

    def __init__(self) -> None:
        self._batches: deque[InFlightBatch] = deque()

    def __len__(self) -> int:
        return len(self._batches)

    def open(
        self,
        positions: Iterable[tuple[str, int, int]],
        messages: Sequence[InputMessage] = (),
        on_done: Callable[[], None] | None = None,
        rescue: Rescue | None = None,
    ) -> InFlightBatch:
        """Track a new batch of (topic, partition, offset) input messages."""
        offsets: dict[Partition, int] = {}
        for topic, partition, offset in positions:
            tp = (topic, partition)
            offsets[tp] = max(offsets.get(tp, 0), offset + 1)
        batch = InFlightBatch(offsets, messages, on_done, rescue)
        self._batches.append(batch)
        return batch

    def failed(self) -> list[str]:
        """Delivery failures of any batch still in flight."""
        return [f for b in self._batches for f in b.failures]

    def pop_committable(self) -> dict[Partition, int]:
        """Offsets of the leading batches that are fully acknowledged, removed from tracking.

        Stops at the first batch with records outstanding, failed or abandoned, so such a
        batch's events are never skipped by a later batch's commit.
        """
        offsets: dict[Partition, int] = {}
        while self._batches and self._batches[0].done:
            batch = self._batches.popleft()
            offsets.update(batch.next_offsets)
            if batch.on_done is not None:
                batch.on_done()
        return offsets


class Committer(Protocol):
    """What the agent loop needs from a delivery guarantee."""

    def begin(
        self, messages: Sequence[InputMessage], on_done: Callable[[], None], rescue: Rescue
    ) -> InFlightBatch:
        """Start a batch of consumed messages; its records go through `produce`. `on_done`
        runs once they are all durable; `rescue` answers a record refused for its size."""
        ...

    def fresh(self, messages: Sequence[InputMessage]) -> list[Any]:
        """The messages a batch may serve, now counted as served (see `Positions`)."""
        ...

    def produce(self, batch: InFlightBatch, records: Sequence[Outgoing]) -> None:
        """Send the records of `batch`."""
        ...

    def abandon(self, batch: InFlightBatch) -> None:
        """Serving `batch` raised: never commit it (it will be consumed again)."""
        ...

    def poll(self) -> None:
        """Serve delivery reports and commit finished batches; DeliveryFailed on a loss."""
        ...

    def wait_for_room(
        self, stopping: Callable[[], bool], check: Callable[[], None] = lambda: None
    ) -> None:
        """Return once another batch may begin, or as soon as `stopping()` is true; `check`
        runs every turn of a wait (it may raise to give up on the clients)."""
        ...

    def close(self, timeout_s: float) -> None:
        """Flush, commit everything finished, leave the group; DeliveryFailed if records
        stayed unacknowledged (their offsets stay uncommitted)."""
        ...

    def discard(self) -> None:
        """Drop clients that cannot reach the cluster without committing anything more."""
        ...

    @property
    def in_flight(self) -> int:
        """Batches begun and not yet committable."""
        ...

    assigned: set[Partition]
    """The input partitions this member owns."""
    progress_at: float
    """When a batch last became committable (or partitions were assigned)."""

    # confluent-kafka callbacks, run inside consume/poll
    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None: ...
    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None: ...
    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None: ...
    def on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None: ...


class AtLeastOnce:
    """Commit after acknowledgement: a crash repeats work, never loses it."""

    def __init__(
        self,
        consumer: Consumer,
        producer: Producer,
        max_in_flight: int,
        metrics: Metrics,
        *,
        drain_timeout_s: float,
        source: KafkaBatchSource | None = None,
    ) -> None:
        """`source` is the consumer's batch source, served (paused) while waiting for room."""
        self.consumer = consumer
        self.producer = producer
        self.source = source
        self.max_in_flight = max_in_flight
        self.metrics = metrics
        self.drain_timeout_s = drain_timeout_s
        self.assigned: set[Partition] = set()
        self._in_flight = InFlight()
        self._positions = Positions()
        self._served_to: dict[Partition, int] = {}
        """Per input partition, the offset after the last event whose batch was acknowledged."""
        self._hurry = False
        """Closing with records unacknowledged: nothing may wait for the cluster any more."""
        self._confirmed: dict[Partition, int] = {}
        """Per input partition, the offset of the last commit the coordinator answered, in
        the order it answered: a failed or overtaken commit leaves it behind `_served_to`."""
        self._recommit_at = 0.0
        self.progress_at = time.monotonic()
        """When a batch last became committable (or partitions were assigned)."""

    @property
    def in_flight(self) -> int:
        """Batches begun and not yet committable."""
        return len(self._in_flight)

    # -- the batch loop -------------------------------------------------------------------
    def fresh(self, messages: Sequence[InputMessage]) -> list[Any]:
        return self._positions.take(messages, self.assigned)

    def begin(
        self, messages: Sequence[InputMessage], on_done: Callable[[], None], rescue: Rescue
    ) -> InFlightBatch:
        return self._in_flight.open((coordinates(m) for m in messages), messages, on_done, rescue)

    def produce(self, batch: InFlightBatch, records: Sequence[Outgoing]) -> None:
        produce_records(self.producer, batch, records)

    def abandon(self, batch: InFlightBatch) -> None:
        batch.abandoned = True

    def poll(self) -> None:
        self.producer.poll(0)
        self._commit(asynchronous=True)

    def wait_for_room(
        self, stopping: Callable[[], bool], check: Callable[[], None] = lambda: None
    ) -> None:
        """Acknowledgements can take as long as the brokers are away, so the consumer keeps
        being served meanwhile, paused: rebalance callbacks and commit results come only from
        consume/poll, and a group session lost in an outage is rejoined only after the
        revoke is served. `check` runs every turn (it may raise to give up on the clients)."""
        if len(self._in_flight) < self.max_in_flight:
            return
        # Ordinary waits last milliseconds: pause only a wait that lasts (pausing and
        # resuming around every batch was seen to leave a partition without fetches).
        serve_after = time.monotonic() + PAUSE_AFTER_S
        paused = False
        try:
            while len(self._in_flight) >= self.max_in_flight and not stopping():
                self.producer.poll(ROOM_POLL_S)
                if self.source is not None and time.monotonic() >= serve_after:
                    if not paused:
                        self.source.pause()
                        paused = True
                    self.source.serve()
                self._commit(asynchronous=True)
                check()
        finally:
            if paused and self.source is not None:
                self.source.resume()

    def discard(self) -> None:
        """Drop clients that cannot reach the cluster: nothing unacknowledged was committed,
        so the next consumer starts at the committed offsets and serves it again."""
        self.producer.purge()
        self._in_flight = InFlight()
        self._forget([TopicPartition(t, p) for t, p in self.assigned])
        leave_group(self.consumer)

    def close(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        try:
            remaining = self.producer.flush(timeout_s)
            if remaining:
                # The cluster is not answering: commit what is done without waiting for it,
                # and let the hand-over in consumer.close() wait for nothing either.
                self._hurry = True
                self._commit(asynchronous=True)
                raise DeliveryFailed(
                    f"{remaining} record(s) unacknowledged after {timeout_s:.0f}s; "
                    "their input offsets stay uncommitted and will be served again"
                )
            if not self._final_commit(deadline):
                self._hurry = True
                log.warning(
                    "the closing commit did not finish within %.0fs; a restart may serve "
                    "some acknowledged events again",
                    timeout_s,
                )
        finally:
            self._leave_group(deadline)

    def _final_commit(self, deadline: float) -> bool:
        """Commit every served position synchronously, but give up at `deadline`: librdkafka's
        synchronous commit has no timeout and waits for a coordinator that may be hung."""
        errors: list[BaseException] = []

        def commit() -> None:
            try:
                self._commit(asynchronous=False)
            except BaseException as exc:  # handed to the closing thread below
                errors.append(exc)

        worker = threading.Thread(target=commit, name="final-commit", daemon=True)
        worker.start()
        worker.join(max(deadline - time.monotonic(), 0.5))
        if errors:
            raise errors[0]
        return not worker.is_alive()

    def _leave_group(self, deadline: float) -> None:
        if not self._hurry:
            self.consumer.close()
            return
        # librdkafka's close waits for the coordinator, which is not answering: give it
        # what is left of the drain time, then leave it to the session timeout.
        closer = threading.Thread(target=self.consumer.close, name="consumer-close", daemon=True)
        closer.start()
        closer.join(max(deadline - time.monotonic(), 0.5))
        if closer.is_alive():
            log.warning("leaving the consumer group timed out; the session timeout ends it")

    # -- rebalances (confluent-kafka callbacks, run inside consume) ------------------------
    def on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.source is not None:
            self.source.assign(partitions)
        self.assigned |= {(p.topic, p.partition) for p in partitions}
        self.progress_at = time.monotonic()
        log.info("assigned %s", sorted(p.partition for p in partitions))

    def on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Hand partitions over with everything served so far committed, so the next owner
        # does not serve it again.
        if not self._hurry:
            self.producer.flush(self.drain_timeout_s)
            self._commit(asynchronous=False)
        self._forget(partitions)

    def on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._positions.forget((p.topic, p.partition) for p in partitions)
        self._forget(partitions)

    def on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """confluent-kafka commit callback: asynchronous commit failures are otherwise silent."""
        for p in partitions:
            tp = (p.topic, p.partition)
            if err is None and p.error is None and tp in self.assigned:
                self._confirmed[tp] = p.offset
        if err is None:
            return
        self.metrics.commit_failures.inc()
        log.warning("offset commit failed (committed again shortly): %s", err.str())

    # -- internals -------------------------------------------------------------------------
    def _commit(self, *, asynchronous: bool) -> None:
        """Commit every fully acknowledged batch; then fail loudly if a delivery failed.

        Steady state commits asynchronously (a lost commit is superseded by the next one);
        before a hand-over or exit every served position is committed again synchronously,
        with retries, so a graceful stop repeats nothing.
        """
        fresh = self._in_flight.pop_committable()
        self._served_to.update(fresh)
        now = time.monotonic()
        if fresh:
            self.progress_at = now
        offsets = fresh if asynchronous else self._served_to
        if asynchronous and now >= self._recommit_at:
            # An async commit can fail (no coordinator during a broker restart) or be
            # overtaken by an older one librdkafka retried; with no new batch for that
            # partition nothing would ever commit its served offset again.
            self._recommit_at = now + RECOMMIT_INTERVAL_S
            behind = {tp: o for tp, o in self._served_to.items() if self._confirmed.get(tp) != o}
            offsets = {**behind, **fresh}
        owned = [
            TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in self.assigned
        ]
        if owned and asynchronous:
            self.consumer.commit(offsets=owned, asynchronous=True)
        elif owned:
            try:
                retrying(
                    lambda: self.consumer.commit(offsets=owned, asynchronous=False),
                    COMMIT_RETRY_S,
                )
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if not isinstance(err, KafkaError) or err.code() not in NOT_A_MEMBER:
                    raise
                # The group moved on without this member (a session that ran out under
                # load): its partitions are someone else's, who serves the uncommitted
                # events again. Repeated, never lost.
                self.metrics.commit_failures.inc()
                log.warning("commit refused, this member left the group: %s", err.str())
            else:
                self._confirmed.update(((p.topic, p.partition), p.offset) for p in owned)
        failures = self._in_flight.failed()
        if failures:
            raise DeliveryFailed(
                f"{len(failures)} record(s) were not acknowledged (first: {failures[0]}); "
                "their input offsets stay uncommitted and will be served again"
            )

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self.assigned.discard((p.topic, p.partition))
            self._served_to.pop((p.topic, p.partition), None)
            self._confirmed.pop((p.topic, p.partition), None)
        if self.source is not None:
            self.source.forget(partitions)


def leave_group(consumer: Consumer) -> None:
    """Close a consumer that is being replaced, giving up after CLOSE_LOST_TIMEOUT_S: left
    open, its background threads would keep it a member of the group, and the group would
    wait for it (up to max.poll.interval.ms) before the new consumer got any partition."""
    closer = threading.Thread(target=consumer.close, name="close-lost", daemon=True)
    closer.start()
    closer.join(CLOSE_LOST_TIMEOUT_S)


def produce_records(producer: Producer, batch: InFlightBatch, records: Sequence[Outgoing]) -> None:
    """Send a batch's records, tracking each one's acknowledgement: dead letters one by one
    (they carry headers), the rest per topic in one `produce_batch` call, in order. A record
    refused for its size (by librdkafka before sending, or by the broker) goes to the
    batch's rescue: an output becomes a dead letter, a lake entry is dropped."""
    by_topic: dict[str, list[Outgoing]] = {}
    for record in records:
        if record.kind is Kind.DEAD_LETTER:
            produce_record(producer, batch, record)
        else:
            by_topic.setdefault(record.topic, []).append(record)
    for topic, group in by_topic.items():

        def delivered(err: KafkaError | None, msg: Message, group: list[Outgoing] = group) -> None:
            if err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                batch.outstanding -= 1
                _refused(producer, batch, _find(group, msg), err.str())
                return
            batch.on_delivery(err, msg)

        refused = produce_many(producer, topic, [(r.key, r.value) for r in group], delivered)
        batch.outstanding += len(group) - len(refused)
        for index, err in refused:
            if err.code() != KafkaError.MSG_SIZE_TOO_LARGE:
                raise KafkaException(err)
            _refused(producer, batch, group[index], err.str())


def _find(group: list[Outgoing], msg: Message) -> Outgoing:
    """The record a delivery report is about (only on the rare size-refusal path)."""
    key, value = msg.key(), msg.value()
    return next(r for r in group if r.key == key and r.value == value)


def produce_record(producer: Producer, batch: InFlightBatch, record: Outgoing) -> None:
    """Send one record of `batch`, tracking its acknowledgement (see `produce_records`)."""
    try:
        _send(producer, batch, record)
    except KafkaException as exc:
        # librdkafka refuses a record above message.max.bytes before sending it.
        err = exc.args[0] if exc.args else None
        if not isinstance(err, KafkaError) or err.code() != KafkaError.MSG_SIZE_TOO_LARGE:
            raise
        _refused(producer, batch, record, err.str())


def _send(producer: Producer, batch: InFlightBatch, record: Outgoing) -> None:
    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            _refused(producer, batch, record, err.str())
            batch.outstanding -= 1
            return
        batch.on_delivery(err, msg)

    produce(
        producer,
        record.topic,
        record.value,
        record.key,
        headers=record.headers,
        on_delivery=delivered,
    )
    batch.sent()


def _refused(producer: Producer, batch: InFlightBatch, record: Outgoing, why: str) -> None:
    if record.kind is Kind.DEAD_LETTER or batch.rescue is None:
        batch.failures.append(f"{record.topic}: {why}")
        return
    instead = batch.rescue(record, batch.messages[record.source], why)
    if instead is not None:
        _send(producer, batch, instead)
