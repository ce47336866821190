"""InFlight: input offsets become committable only after every output of the batch is acked;
Positions: each owned offset is served once."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaError

from streamer.commits import InFlight, InFlightBatch, Positions

TIMED_OUT = KafkaError(KafkaError._MSG_TIMED_OUT)
A, B1, B2 = (KafkaError(KafkaError._MSG_TIMED_OUT, reason) for reason in ("a", "b1", "b2"))


def produce(batch: InFlightBatch, n: int) -> None:
    for _ in range(n):
        batch.sent()


def ack(batch: InFlightBatch, n: int = 1, err: KafkaError | None = None) -> None:
    for _ in range(n):
        batch.on_delivery(err, None)


def test_next_offsets_is_max_offset_plus_one_per_partition() -> None:
    inflight = InFlight()
    batch = inflight.open(
        [("tx", 0, 10), ("tx", 1, 5), ("tx", 0, 12), ("tx", 0, 11), ("tx", 1, 3), ("other", 0, 0)]
    )
    assert batch.next_offsets == {("tx", 0): 13, ("tx", 1): 6, ("other", 0): 1}


def test_offset_zero_commits_one() -> None:
    batch = InFlight().open([("tx", 2, 0)])
    assert batch.next_offsets == {("tx", 2): 1}


def test_commit_only_after_all_deliveries_acked() -> None:
    inflight = InFlight()
    batch = inflight.open([("tx", 0, 0), ("tx", 0, 1), ("tx", 0, 2)])
    produce(batch, 4)  # e.g. 3 outputs + 1 dead letter; lake records count too
    assert inflight.pop_committable() == {}
    ack(batch, 3)
    assert inflight.pop_committable() == {}
    assert len(inflight) == 1
    ack(batch)
    assert inflight.pop_committable() == {("tx", 0): 3}
    assert len(inflight) == 0
    assert inflight.pop_committable() == {}  # popped once, never again


def test_batch_with_no_outputs_commits_at_once() -> None:
    inflight = InFlight()
    inflight.open([("tx", 0, 7)])
    assert inflight.pop_committable() == {("tx", 0): 8}


def test_earlier_unacked_batch_blocks_later_acked_ones() -> None:
    inflight = InFlight()
    first = inflight.open([("tx", 0, 0), ("tx", 1, 0)])
    second = inflight.open([("tx", 0, 1), ("tx", 1, 1)])
    third = inflight.open([("tx", 0, 2)])
    for b in (first, second, third):
        produce(b, 2)
    ack(second, 2)
    ack(third, 2)
    assert inflight.pop_committable() == {}
    assert len(inflight) == 3
    ack(first, 2)
    # All three are acked now: one commit covering them, the newest offset per partition.
    assert inflight.pop_committable() == {("tx", 0): 3, ("tx", 1): 2}
    assert len(inflight) == 0


def test_commits_advance_in_order_as_batches_complete() -> None:
    inflight = InFlight()
    batches = [inflight.open([("tx", 0, i)]) for i in range(4)]
    for b in batches:
        produce(b, 1)
    ack(batches[0])
    assert inflight.pop_committable() == {("tx", 0): 1}
    ack(batches[2])
    assert inflight.pop_committable() == {}  # batch 1 still outstanding
    ack(batches[1])
    assert inflight.pop_committable() == {("tx", 0): 3}
    ack(batches[3])
    assert inflight.pop_committable() == {("tx", 0): 4}


def test_partition_missing_from_later_batch_keeps_earlier_offset() -> None:
    inflight = InFlight()
    inflight.open([("tx", 0, 4), ("tx", 1, 9)])
    inflight.open([("tx", 0, 5)])
    assert inflight.pop_committable() == {("tx", 0): 6, ("tx", 1): 10}


def test_delivery_error_blocks_and_is_reported() -> None:
    inflight = InFlight()
    first = inflight.open([("tx", 0, 0)])
    second = inflight.open([("tx", 0, 1)])
    produce(first, 2)
    produce(second, 1)
    assert inflight.failed() == []
    ack(first)
    ack(first, err=TIMED_OUT)
    ack(second)
    assert first.outstanding == 0
    assert inflight.failed() == [f"?: {TIMED_OUT}"]
    # Neither the failed batch nor the acked batch behind it may commit.
    assert inflight.pop_committable() == {}
    assert len(inflight) == 2
    assert inflight.failed() == [f"?: {TIMED_OUT}"]


def test_failed_lists_failures_of_every_batch_in_flight() -> None:
    inflight = InFlight()
    a = inflight.open([("tx", 0, 0)])
    b = inflight.open([("tx", 1, 0)])
    produce(a, 1)
    produce(b, 2)
    ack(a, err=A)
    ack(b, err=B1)
    ack(b, err=B2)
    assert inflight.failed() == [f"?: {e}" for e in (A, B1, B2)]


def test_failures_after_commit_are_not_reported() -> None:
    inflight = InFlight()
    ok = inflight.open([("tx", 0, 0)])
    produce(ok, 1)
    ack(ok)
    assert inflight.pop_committable() == {("tx", 0): 1}
    assert inflight.failed() == []


@dataclass
class M:
    """A consumed message's coordinates."""

    p: int
    o: int

    def topic(self) -> str:
        return "in"

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o


def test_positions_serve_each_owned_offset_once_until_rewound_or_lost() -> None:
    positions = Positions()
    owned = {("in", 0), ("in", 1)}
    first = positions.take([M(0, 5), M(0, 6), M(1, 0), M(2, 0)], owned)
    assert [(m.p, m.o) for m in first] == [(0, 5), (0, 6), (1, 0)]  # partition 2 not owned
    # Handed back by a rebalance and fetched again from the committed offset 5:
    again = positions.take([M(0, 5), M(0, 6), M(0, 7)], owned)
    assert [(m.p, m.o) for m in again] == [(0, 7)]
    positions.rewind(("in", 0), 6)  # an aborted transaction began at 6
    assert [(m.p, m.o) for m in positions.take([M(0, 6), M(0, 7)], owned)] == [(0, 6), (0, 7)]
    positions.forget([("in", 1)])  # lost: whatever comes back is served
    assert [(m.p, m.o) for m in positions.take([M(1, 0)], owned)] == [(1, 0)]
