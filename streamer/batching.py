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


IDLE_WAIT_S = 0.1
"""How long `next_batch` waits for a first item before it returns an empty batch: the
caller's loop turns (commits, health, control) at least this often while idle."""


class MicroBatcher(Generic[T]):
    """Closes a batch at `max_batch_size` items or `max_wait_ms` after its first item.

    A batch opens with its first item, so no event waits longer than max_wait_ms for its
    batch to close; an idle source costs one wait of `idle_wait_s` per call, whatever
    max_wait_ms is (0 included: then a batch is whatever is there when the first arrives).
    """

    def __init__(
        self,
        source: BatchSource[T],
        max_batch_size: int,
        max_wait_ms: int,
        clock: Callable[[], float] = time.monotonic,
        idle_wait_s: float = IDLE_WAIT_S,
    ) -> None:
        self.source = source
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.clock = clock
        self.idle_wait_s = idle_wait_s

    def next_batch(self) -> list[T]:
        """The next batch: full, or whatever arrived before the wait ran out (maybe empty)."""
        batch = list(self.source.fetch(self.max_batch_size, 0.0))
        if not batch:
            # Ask for one item: a source may wait for all it is asked for (librdkafka does).
            batch = list(self.source.fetch(1, self.idle_wait_s))
            if not batch:
                return batch
        deadline = self.clock() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            batch.extend(self.source.fetch(self.max_batch_size - len(batch), remaining))
        return batch
