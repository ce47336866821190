"""MicroBatcher against a simulated source and clock: size-or-time batches, no real waiting."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from streamer.batching import IDLE_WAIT_S, MicroBatcher


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeSource:
    """Items arrive at given times; fetch behaves like Kafka's consume(num, timeout).

    It returns at once what has arrived (up to max_items); otherwise it waits, moving the
    clock, until the next arrival or the timeout, whichever is first.
    """

    clock: FakeClock
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    """(arrival time, item), in time order."""
    max_batch_size: int = 0
    """When set, checks that fetch never asks for more than the batch's remaining room."""
    calls: list[tuple[int, float]] = field(default_factory=list)
    in_batch: int = 0

    def fetch(self, max_items: int, timeout_s: float) -> Sequence[int]:
        self.calls.append((max_items, timeout_s))
        assert max_items >= 1
        assert timeout_s >= 0
        if self.max_batch_size:
            assert max_items <= self.max_batch_size - self.in_batch
        if not self._ready():
            wake = self.clock.now + timeout_s
            if self.arrivals:
                wake = min(wake, self.arrivals[0][0])
            self.clock.now = max(self.clock.now, wake)
        n = min(max_items, self._ready())
        taken = [item for _, item in self.arrivals[:n]]
        del self.arrivals[:n]
        self.in_batch += n
        return taken

    def _ready(self) -> int:
        return sum(1 for t, _ in self.arrivals if t <= self.clock.now)


def make(
    arrivals: list[tuple[float, int]], max_batch_size: int, max_wait_ms: int
) -> tuple[MicroBatcher[int], FakeSource, FakeClock]:
    clock = FakeClock()
    source = FakeSource(
        clock, [(clock.now + t, i) for t, i in arrivals], max_batch_size=max_batch_size
    )
    return MicroBatcher(source, max_batch_size, max_wait_ms, clock=clock), source, clock


def next_batch(batcher: MicroBatcher[int], source: FakeSource) -> list[int]:
    source.in_batch = 0
    return batcher.next_batch()


def test_full_batch_returns_immediately() -> None:
    batcher, source, clock = make([(0.0, i) for i in range(1000)], 64, 5)
    start = clock.now
    batch = next_batch(batcher, source)
    assert batch == list(range(64))
    assert clock.now == start  # no waiting at all
    assert source.calls == [(64, 0.0)]
    assert next_batch(batcher, source) == list(range(64, 128))


def test_full_batch_from_a_fast_stream_returns_before_max_wait() -> None:
    # 10 items/ms, batches of 32, wait 50 ms: a batch fills after ~3 ms.
    batcher, source, clock = make([(i / 10_000, i) for i in range(200)], 32, 50)
    start = clock.now
    batch = next_batch(batcher, source)
    assert batch == list(range(32))
    assert clock.now - start < 0.004


def test_trickle_returns_partial_batch_once_max_wait_elapsed() -> None:
    # One item every 3 ms, max_wait 10 ms: items at 0, 3, 6, 9 ms make the first batch.
    batcher, source, clock = make([(i * 0.003, i) for i in range(20)], 100, 10)
    start = clock.now
    batch = next_batch(batcher, source)
    assert batch == [0, 1, 2, 3]
    assert clock.now - start == pytest.approx(0.010)  # not before the wait ran out
    assert all(t <= 0.010 + 1e-12 for _, t in source.calls)
    second = next_batch(batcher, source)
    # The next batch opens with the item at 12 ms and closes 10 ms later: 12, 15, 18, 21.
    assert second == [4, 5, 6, 7]
    assert clock.now - start == pytest.approx(0.022)


def test_partial_batch_never_returned_before_max_wait() -> None:
    # A burst of 5 then silence: the batcher keeps waiting for more until the deadline.
    batcher, source, clock = make([(0.0, i) for i in range(5)], 10, 25)
    start = clock.now
    assert next_batch(batcher, source) == [0, 1, 2, 3, 4]
    assert clock.now - start == pytest.approx(0.025)
    assert len(source.calls) >= 2


def test_idle_source_waits_once_for_a_first_item_then_returns_empty() -> None:
    batcher, source, clock = make([], 512, 5)
    start = clock.now
    assert next_batch(batcher, source) == []
    assert clock.now - start == pytest.approx(IDLE_WAIT_S)
    # One item is asked for: a source that waits for all it is asked for must not hold
    # a lone event for the whole idle wait.
    assert source.calls == [(512, 0.0), (1, IDLE_WAIT_S)]


def test_a_batch_opens_with_its_first_item_not_with_the_call() -> None:
    # Idle for 50 ms, then an item; max_wait 5 ms: the batch closes 5 ms after the item.
    batcher, source, clock = make([(0.050, 1), (0.052, 2), (0.060, 3)], 10, 5)
    start = clock.now
    assert next_batch(batcher, source) == [1, 2]
    assert clock.now - start == pytest.approx(0.055)


def test_source_returning_early_is_asked_again_until_the_deadline() -> None:
    class EarlySource:
        """An item 1 ms into the idle wait; afterwards every fetch returns nothing after
        at most 1 ms (spurious wake-ups)."""

        def __init__(self, clock: FakeClock) -> None:
            self.clock = clock
            self.start = clock.now
            self.calls: list[tuple[int, float]] = []

        def fetch(self, max_items: int, timeout_s: float) -> Sequence[int]:
            self.calls.append((max_items, timeout_s))
            self.clock.now += min(timeout_s, 0.001)
            return [7] if len(self.calls) == 2 else []

    clock = FakeClock()
    source = EarlySource(clock)
    batcher = MicroBatcher(source, 8, 5, clock=clock)
    assert batcher.next_batch() == [7]
    assert clock.now - source.start == pytest.approx(0.001 + 0.005)
    assert [n for n, _ in source.calls] == [8, 1, 7, 7, 7, 7, 7]
    timeouts = [t for _, t in source.calls[2:]]
    assert timeouts == pytest.approx([0.005, 0.004, 0.003, 0.002, 0.001])


def test_max_wait_zero_makes_one_non_blocking_fetch() -> None:
    batcher, source, clock = make([(0.0, 1), (0.0, 2), (0.0, 3), (0.001, 4)], 10, 0)
    start = clock.now
    assert next_batch(batcher, source) == [1, 2, 3]
    assert source.calls == [(10, 0.0)]
    assert clock.now == start

    # Idle, it blocks for a first item instead of spinning on non-blocking fetches.
    idle, idle_source, idle_clock = make([], 10, 0)
    before = idle_clock.now
    assert next_batch(idle, idle_source) == []
    assert idle_source.calls == [(10, 0.0), (1, IDLE_WAIT_S)]
    assert idle_clock.now - before == pytest.approx(IDLE_WAIT_S)


def test_fetch_asked_only_for_the_remaining_room() -> None:
    class OneAtATime:
        def __init__(self) -> None:
            self.asked: list[int] = []

        def fetch(self, max_items: int, timeout_s: float) -> Sequence[int]:
            self.asked.append(max_items)
            return [len(self.asked)]

    source = OneAtATime()
    batcher = MicroBatcher(source, 5, 1000, clock=FakeClock())
    assert batcher.next_batch() == [1, 2, 3, 4, 5]
    assert source.asked == [5, 4, 3, 2, 1]


def test_batch_never_exceeds_max_size_even_from_bursts() -> None:
    class Bursty:
        def __init__(self) -> None:
            self.next_item = 0

        def fetch(self, max_items: int, timeout_s: float) -> Sequence[int]:
            n = min(max_items, 3)
            items = list(range(self.next_item, self.next_item + n))
            self.next_item += n
            return items

    source = Bursty()
    batcher = MicroBatcher(source, 7, 1000, clock=FakeClock())
    seen: list[int] = []
    for _ in range(10):
        batch = batcher.next_batch()
        assert len(batch) == 7
        seen += batch
    assert seen == list(range(70))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_traffic_properties(seed: int) -> None:
    """Bursts and gaps: order kept, sizes bounded, partial batches only after the full wait."""
    rng = random.Random(seed)
    arrivals: list[tuple[float, int]] = []
    t = 0.0
    for i in range(2000):
        t += rng.choice([0.0, 0.0, 0.0001, 0.001, 0.004, 0.02])
        arrivals.append((t, i))
    max_batch, max_wait_ms = 16, 4
    batcher, source, clock = make(arrivals, max_batch, max_wait_ms)
    arrived = {i: clock.now + t for t, i in arrivals}
    got: list[int] = []
    for _ in range(10_000):
        if len(got) == 2000:
            break
        start = clock.now
        batch = next_batch(batcher, source)
        assert batch, "gaps are shorter than the idle wait"
        opened = max(start, arrived[batch[0]])
        elapsed = clock.now - opened
        assert len(batch) <= max_batch
        assert elapsed <= max_wait_ms / 1000 + 1e-9
        if len(batch) < max_batch:
            assert elapsed == pytest.approx(max_wait_ms / 1000)
        got += batch
    assert got == list(range(2000))
