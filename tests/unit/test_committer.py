"""AtLeastOnce with fake clients: what is committed, when, and what never is."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from streamer import commits
from streamer.assembly import InputMessage, Kind, Outgoing
from streamer.commits import AtLeastOnce, InFlightBatch
from streamer.errors import DeliveryFailed
from streamer.metrics import Metrics

Delivery = Callable[[KafkaError | None, Any], None]


@dataclass
class Msg:
    """A consumed message (the accessors assembly and the committer read)."""

    t: str
    p: int
    o: int

    def key(self) -> bytes | None:
        return f"k{self.o}".encode()

    def value(self) -> bytes | None:
        return b"v"

    def headers(self) -> None:
        return None

    def topic(self) -> str:
        return self.t

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o

    def timestamp(self) -> tuple[int, int]:
        return (1, 0)


@dataclass
class Delivered:
    """A delivery report's message: the record as sent."""

    t: str
    k: bytes | None
    v: bytes | None

    def topic(self) -> str:
        return self.t

    def key(self) -> bytes | None:
        return self.k

    def value(self) -> bytes | None:
        return self.v


@dataclass
class Sent:
    topic: str
    callback: Delivery
    key: bytes | None = None
    value: bytes | None = None

    def ack(self, err: KafkaError | None = None) -> None:
        self.callback(err, Delivered(self.topic, self.key, self.value))


@dataclass
class FakeProducer:
    sent: list[Sent] = field(default_factory=list)
    refuse_over: int | None = None
    """Refuse (like librdkafka's message.max.bytes) values longer than this."""

    def produce(self, topic: str, value: bytes, key: bytes, **kw: Any) -> None:
        if self.refuse_over is not None and len(value) > self.refuse_over:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.sent.append(Sent(topic, kw["on_delivery"], key, value))

    def produce_batch(
        self, topic: str, messages: list[dict[str, Any]], on_delivery: Delivery
    ) -> int:
        queued = 0
        for message in messages:
            if self.refuse_over is not None and len(message["value"]) > self.refuse_over:
                message["_error"] = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
                continue
            self.sent.append(Sent(topic, on_delivery, message["key"], message["value"]))
            queued += 1
        return queued

    def poll(self, _timeout: float = 0) -> int:
        return 0

    def flush(self, _timeout: float = 0) -> int:
        return 0


@dataclass
class FakeConsumer:
    commits: list[tuple[list[tuple[str, int, int]], bool]] = field(default_factory=list)
    closed: bool = False

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append(([(o.topic, o.partition, o.offset) for o in offsets], asynchronous))

    def close(self) -> None:
        self.closed = True


def make(max_in_flight: int = 4) -> tuple[AtLeastOnce, FakeConsumer, FakeProducer, Metrics]:
    consumer, producer, metrics = FakeConsumer(), FakeProducer(), Metrics()
    committer = AtLeastOnce(
        cast(Consumer, consumer),
        cast(Producer, producer),
        max_in_flight,
        metrics,
        drain_timeout_s=1.0,
    )
    committer.on_assign(
        cast(Consumer, consumer), [TopicPartition("in", 0), TopicPartition("in", 1)]
    )
    return committer, consumer, producer, metrics


def out(kind: Kind = Kind.OUTPUT, source: int = 0, value: bytes = b"x") -> Outgoing:
    topic = {Kind.OUTPUT: "out", Kind.LAKE: "lake", Kind.DEAD_LETTER: "dlq"}[kind]
    return Outgoing(kind, topic, b"k", value, None, source, "a")


def no_rescue(_record: Outgoing, _msg: InputMessage, _why: str) -> Outgoing | None:
    raise AssertionError("nothing is refused here")


def begin(committer: AtLeastOnce, *offsets: int, done: list[int] | None = None) -> InFlightBatch:
    def on_done() -> None:
        if done is not None:
            done.append(offsets[0])

    return committer.begin([Msg("in", 0, o) for o in offsets], on_done, no_rescue)


def test_offsets_commit_after_every_record_is_acknowledged_and_count_then() -> None:
    committer, consumer, producer, _ = make()
    done: list[int] = []
    batch = begin(committer, 0, 1, 2, done=done)
    committer.produce(batch, [out()])
    committer.produce(batch, [out(Kind.LAKE)])
    committer.poll()
    assert consumer.commits == [] and done == []
    producer.sent[0].ack()
    committer.poll()
    assert consumer.commits == []
    producer.sent[1].ack()
    committer.poll()
    assert consumer.commits == [([("in", 0, 3)], True)]
    assert done == [0]


def test_an_abandoned_batch_and_everything_after_it_are_never_committed() -> None:
    committer, consumer, producer, _ = make()
    first = begin(committer, 0)
    committer.produce(first, [out()])
    broken = begin(committer, 1)
    committer.produce(broken, [out()])
    committer.abandon(broken)
    after = begin(committer, 2)
    committer.produce(after, [out()])
    for sent in producer.sent:
        sent.ack()
    committer.close(1.0)
    assert consumer.closed
    committed = [offsets for offsets, _ in consumer.commits]
    assert committed == [[("in", 0, 1)]]  # the closing commit stops before the abandoned batch


def test_a_record_refused_for_size_is_replaced_by_the_rescue_in_the_same_batch() -> None:
    committer, consumer, producer, _ = make()
    rescued: list[tuple[Outgoing, int, str]] = []

    def rescue(record: Outgoing, msg: InputMessage, why: str) -> Outgoing | None:
        rescued.append((record, msg.offset() or 0, why))
        return out(Kind.DEAD_LETTER, record.source)

    batch = committer.begin([Msg("in", 0, 5), Msg("in", 0, 6)], lambda: None, rescue)
    committer.produce(batch, [out(Kind.OUTPUT, source=1)])
    producer.sent[0].ack(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    ((record, offset, why),) = rescued
    assert (record.kind, offset) == (Kind.OUTPUT, 6) and "too large" in why
    assert [s.topic for s in producer.sent] == ["out", "dlq"]
    committer.poll()
    assert consumer.commits == []  # the dead letter is not acknowledged yet
    producer.sent[1].ack()
    committer.poll()
    assert consumer.commits == [([("in", 0, 7)], True)]


def test_a_record_refused_before_sending_is_rescued_too() -> None:
    committer, _, producer, _ = make()
    producer.refuse_over = 3
    rescued: list[Outgoing] = []

    def rescue(record: Outgoing, _msg: InputMessage, _why: str) -> Outgoing | None:
        rescued.append(record)
        return None  # a lake record: dropped

    batch = committer.begin([Msg("in", 0, 0)], lambda: None, rescue)
    committer.produce(batch, [out(Kind.LAKE, value=b"too long")])
    assert [r.kind for r in rescued] == [Kind.LAKE]
    assert producer.sent == []
    assert batch.done


def test_a_refused_dead_letter_is_a_loss_that_names_the_topic() -> None:
    committer, consumer, producer, _ = make()
    batch = begin(committer, 0)
    committer.produce(batch, [out(Kind.DEAD_LETTER)])
    producer.sent[0].ack(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    with pytest.raises(DeliveryFailed, match="dlq: "):
        committer.poll()
    assert consumer.commits == []


def test_wait_for_room_returns_when_stopping_even_if_nothing_is_acknowledged() -> None:
    committer, _, _, _ = make(max_in_flight=1)
    batch = begin(committer, 0)
    committer.produce(batch, [out()])
    turns: list[int] = []

    def stopping() -> bool:
        turns.append(1)
        return len(turns) > 3

    committer.wait_for_room(stopping)
    assert len(turns) == 4


def test_asynchronous_commit_failures_are_counted() -> None:
    committer, _, _, metrics = make()
    committer.on_commit(None, [])
    committer.on_commit(KafkaError(KafkaError.REBALANCE_IN_PROGRESS), [])
    assert metrics.value("streamer_commit_failures_total") == 1


def test_revoked_partitions_are_not_committed_any_more() -> None:
    committer, consumer, producer, _ = make()
    committer.on_revoke(cast(Consumer, consumer), [TopicPartition("in", 0)])
    batch = begin(committer, 9)
    committer.produce(batch, [out()])
    producer.sent[0].ack()
    committer.poll()
    assert consumer.commits == []


def test_a_failed_asynchronous_commit_is_made_again_without_new_batches() -> None:
    committer, consumer, producer, _ = make()
    batch = begin(committer, 0, 1)
    committer.produce(batch, [out()])
    producer.sent[0].ack()
    committer.poll()
    assert consumer.commits == [([("in", 0, 2)], True)]
    # The coordinator was away: the commit failed and no further batch arrives.
    committer.on_commit(KafkaError(KafkaError._WAIT_COORD), [TopicPartition("in", 0, 2)])
    committer._recommit_at = 0.0  # the re-commit interval has passed
    committer.poll()
    assert consumer.commits[-1] == ([("in", 0, 2)], True)
    assert len(consumer.commits) == 2
    # Once the coordinator confirms it, nothing is committed again.
    committer.on_commit(None, [TopicPartition("in", 0, 2)])
    committer._recommit_at = 0.0
    committer.poll()
    assert len(consumer.commits) == 2


@dataclass
class FakeSource:
    calls: list[str] = field(default_factory=list)

    def pause(self) -> None:
        self.calls.append("pause")

    def serve(self) -> None:
        self.calls.append("serve")

    def resume(self) -> None:
        self.calls.append("resume")

    def forget(self, _partitions: list[TopicPartition]) -> None:
        self.calls.append("forget")

    def assign(self, _partitions: list[TopicPartition]) -> None:
        self.calls.append("assign")


def test_waiting_for_room_keeps_serving_the_paused_consumer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer, producer, source = FakeConsumer(), FakeProducer(), FakeSource()
    committer = AtLeastOnce(
        cast(Consumer, consumer),
        cast(Producer, producer),
        1,
        Metrics(),
        drain_timeout_s=1.0,
        source=cast(Any, source),
    )
    committer.on_assign(cast(Consumer, consumer), [TopicPartition("in", 0)])
    batch = begin(committer, 0)
    committer.produce(batch, [out()])
    checks: list[int] = []
    monkeypatch.setattr(commits, "PAUSE_AFTER_S", 0.0)  # a wait that lasts

    def check() -> None:
        checks.append(1)
        if len(checks) == 3:
            producer.sent[0].ack()  # acknowledged while waiting: room again

    committer.wait_for_room(lambda: False, check)
    # The turn after the acknowledgement commits the batch, and the wait ends.
    assert source.calls == ["assign", "pause", "serve", "serve", "serve", "serve", "resume"]
    assert len(checks) == 4


def test_a_commit_overtaken_by_an_older_one_is_made_again() -> None:
    committer, consumer, producer, _ = make()
    for offset in (0, 1):
        batch = begin(committer, offset)
        committer.produce(batch, [out()])
        producer.sent[-1].ack()
        committer.poll()
    # The coordinator answered the newer commit first, then a retried older one.
    committer.on_commit(None, [TopicPartition("in", 0, 2)])
    committer.on_commit(None, [TopicPartition("in", 0, 1)])
    committer._recommit_at = 0.0
    committer.poll()
    assert consumer.commits[-1] == ([("in", 0, 2)], True)
