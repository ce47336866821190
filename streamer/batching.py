"""Size-or-time micro-batches over any source of items (Kafka, a file, a request queue)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class BatchSource(Protocol[T_co]):
    def fetch(self, max_items: int, timeout_s: float) -> Sequence[T_co]:
        """Up to `max_items` items, waiting at most `timeout_s` for them (may return early)."""
        ...


class MicroBatcher(Generic[T]):
    """Closes a batch at `max_batch_size` items or `max_wait_ms` after it was opened.

    A batch opens when `next_batch` is called, so no event waits longer than max_wait_ms
    for its batch to close, and an idle source costs one bounded wait per call.
    """

    def __init__(
        self,
        source: BatchSource[T],
        max_batch_size: int,
        max_wait_ms: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.clock = clock

    def next_batch(self) -> list[T]:
        """The next batch: full, or whatever arrived before the wait ran out (maybe empty)."""
        deadline = self.clock() + self.max_wait_s
        batch = list(self.source.fetch(self.max_batch_size, self.max_wait_s))
        while len(batch) < self.max_batch_size:
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            batch.extend(self.source.fetch(self.max_batch_size - len(batch), remaining))
        return batch
