"""At-least-once bookkeeping: a batch's input offsets become committable only after every
record it produced is acknowledged, and batches commit in the order they were consumed."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

TopicPartition = tuple[str, int]


@dataclass
class InFlightBatch:
    """Records produced for one input batch, and the input positions it covers."""

    next_offsets: dict[TopicPartition, int]
    """Per input partition, the offset after the batch's last message (what to commit)."""
    outstanding: int = 0
    failures: list[str] = field(default_factory=list)

    def sent(self) -> None:
        self.outstanding += 1

    def on_delivery(self, err: object, _msg: object) -> None:
        """confluent-kafka delivery callback: one call per produced record."""
        self.outstanding -= 1
        if err is not None:
            self.failures.append(str(err))


class InFlight:
    """Batches between produce and commit, oldest first."""

    def __init__(self) -> None:
        self._batches: deque[InFlightBatch] = deque()

    def __len__(self) -> int:
        return len(self._batches)

    def open(self, messages: Iterable[tuple[str, int, int]]) -> InFlightBatch:
        """Track a new batch of (topic, partition, offset) input messages."""
        offsets: dict[TopicPartition, int] = {}
        for topic, partition, offset in messages:
            tp = (topic, partition)
            offsets[tp] = max(offsets.get(tp, 0), offset + 1)
        batch = InFlightBatch(offsets)
        self._batches.append(batch)
        return batch

    def failed(self) -> list[str]:
        """Delivery failures of any batch still in flight."""
        return [f for b in self._batches for f in b.failures]

    def pop_committable(self) -> dict[TopicPartition, int]:
        """Offsets of the leading batches that are fully acknowledged, removed from tracking.

        Stops at the first batch with records outstanding or failed, so an unacknowledged
        batch's events are never skipped by a later batch's commit.
        """
        offsets: dict[TopicPartition, int] = {}
        while self._batches and self._batches[0].outstanding == 0 and not self._batches[0].failures:
            offsets.update(self._batches.popleft().next_offsets)
        return offsets
