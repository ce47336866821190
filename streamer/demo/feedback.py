"""The demo's feedback producer: the demo knows each transaction's true label, so every
served prediction earns a reward, 1 when it is right and 0 when not, sent to the bandit's
feedback topic a random moment after its output appears (key = id, as a client would send
it: the default partitioner puts it in the partition of the lake record of the same id).

Garbage events have no output and so no reward; an output this run did not send (another
run's, or a duplicate of one already rewarded) gets none either.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message, TopicPartition

from streamer.codecs import make_decoder
from streamer.config import Topology
from streamer.errors import StreamerError
from streamer.kafka.clients import make_consumer, make_producer, produce

REWARD_DELAY_S = (0.0, 3.0)
"""A reward is sent uniformly within this many seconds after its output is read."""


def reward_for(output: Mapping[str, Any], truth: MutableMapping[str, int]) -> int | None:
    """1 when the output's `label` is the event's true label, else 0; None for an id without
    a true label (not this run's, or already rewarded: its label is taken out of `truth`)."""
    label = truth.pop(str(output.get("id")), None)
    if label is None:
        return None
    predicted = output.get("label")
    if isinstance(predicted, list):  # an output of shape [N, 1] comes as a one-element list
        predicted = predicted[0] if len(predicted) == 1 else None
    if isinstance(predicted, bool) or not isinstance(predicted, int | float):
        return 0  # no usable label: not right
    return int(predicted == label)


def feedback_value(event_id: str, reward: float) -> bytes:
    """A feedback record's value: `{"id": ..., "reward": ...}`."""
    return orjson.dumps({"id": event_id, "reward": reward})


@dataclass
class RewardTally:
    """Rewards per served variant: how many, and their sum."""

    counts: dict[str, int] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)

    def add(self, variant: str, reward: float) -> None:
        self.counts[variant] = self.counts.get(variant, 0) + 1
        self.sums[variant] = self.sums.get(variant, 0.0) + reward

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def means(self) -> dict[str, tuple[int, float]]:
        """Variant -> (rewards, their mean), by variant name."""
        return {v: (n, self.sums[v] / n) for v, n in sorted(self.counts.items()) if n}


@dataclass(order=True)
class _Due:
    at: float
    seq: int
    event_id: str = field(compare=False)
    variant: str = field(compare=False)
    reward: int = field(compare=False)


class Feedback:
    """Reads the run's outputs from `start` (output partition -> offset) and sends each
    one's reward after a random delay, in a background thread from `start()` to `stop()`."""

    def __init__(
        self,
        topology: Topology,
        truth: MutableMapping[str, int],
        start: Mapping[int, int],
        seed: int,
        delay_s: tuple[float, float] = REWARD_DELAY_S,
    ) -> None:
        if topology.bandit is None:
            raise StreamerError(f"{topology.source}: the demo's feedback needs a bandit section")
        self.topology = topology
        self.topic = topology.bandit.feedback_topic
        self.truth = truth
        """Event id -> true label, filled by the demo's producer as it sends events."""
        self.start_offsets = dict(start)
        self.delay_s = delay_s
        self.rng = random.Random(seed)  # noqa: S311 - simulated delays, not security
        self.read = 0
        """Outputs read."""
        self.sent = RewardTally()
        """Rewards handed to the producer, by the variant that served the prediction."""
        self.error: BaseException | None = None
        self._due: list[_Due] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-feedback", daemon=True)

    @property
    def pending(self) -> int:
        """Rewards waiting for their moment."""
        return len(self._due)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop reading and flush what was sent (rewards not yet due are dropped); raise what
        went wrong in the thread."""
        self.close()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Stop like `stop`, but raise nothing (when something else failed already)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(60)

    def _run(self) -> None:
        t = self.topology
        try:
            decoder = make_decoder(t.output.format, t.output.schema_)
            consumer = make_consumer(t.kafka, "streamer-demo-feedback")  # assign()ed only
            producer = make_producer(t.kafka, {"linger.ms": 5})
        except BaseException as exc:  # surfaced by the live view and stop()
            self.error = exc
            return
        failed: list[str] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failed.append(err.str())

        try:
            consumer.assign(
                [TopicPartition(t.output.topic, p, o) for p, o in self.start_offsets.items()]
            )
            seq = 0
            while not self._stop.is_set() and not failed:
                for msg in consumer.consume(1000, 0.05):
                    if msg.error():
                        continue
                    self.read += 1
                    output = decoder.decode(msg.value())
                    reward = reward_for(output, self.truth)
                    if reward is None:
                        continue
                    seq += 1
                    at = time.monotonic() + self.rng.uniform(*self.delay_s)
                    due = _Due(at, seq, str(output["id"]), str(output["variant"]), reward)
                    heapq.heappush(self._due, due)
                now = time.monotonic()
                while self._due and self._due[0].at <= now:
                    due = heapq.heappop(self._due)
                    value = feedback_value(due.event_id, due.reward)
                    key = due.event_id.encode()
                    produce(producer, self.topic, value, key, on_delivery=delivered)
                    self.sent.add(due.variant, due.reward)
                producer.poll(0)
            if producer.flush(30):
                failed.append("not all acknowledged within 30 s")
            if failed:
                raise StreamerError(f"demo rewards to {self.topic}: {failed[0]}")
        except BaseException as exc:  # surfaced by the live view and stop()
            self.error = exc
        finally:
            consumer.close()
