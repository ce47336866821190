"""Run and observe topologies in-process against a real broker: for users' tests of their
own topologies, streamer's tests and the demo."""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, Protocol, TypeVar

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from streamer.agent import Agent, AgentStats
from streamer.assembly import coordinates
from streamer.bandit.controller import Controller, ControllerStats
from streamer.config import Topology
from streamer.kafka.clients import produce as produce_one
from streamer.kafka.clients import retrying
from streamer.models import Model

S = TypeVar("S")
S_co = TypeVar("S_co", covariant=True)


@dataclass(frozen=True)
class Record:
    """A consumed record, detached from librdkafka."""

    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    partition: int
    offset: int
    timestamp_ms: int


def produce(
    bootstrap: str,
    topic: str,
    items: Iterable[tuple[bytes | None, bytes | None]],
) -> int:
    """Produce (key, value) pairs and wait until all are acknowledged; returns the count."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
    )
    errors: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    n = 0
    for key, value in items:
        produce_one(producer, topic, value, key, on_delivery=on_delivery)
        n += 1
    if producer.flush(60) or errors:
        raise RuntimeError(f"produce to {topic} failed: {errors[:3]}")
    return n


def consume(
    bootstrap: str,
    topic: str | Sequence[str],
    expected: int,
    timeout_s: float = 60.0,
    idle_s: float = 1.0,
) -> list[Record]:
    """Read `topic` (or several) from the start until `expected` records arrived (then
    `idle_s` more, to catch extras) or the timeout passed. Uses a fresh group and
    read_committed."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"streamer-test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic] if isinstance(topic, str) else list(topic))
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    settled_at: float | None = None
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.2):
                if msg.error():
                    raise KafkaException(msg.error())
                _, partition, offset = coordinates(msg)
                raw = msg.headers() or []
                pairs = raw.items() if isinstance(raw, dict) else raw
                headers = {k: v for k, v in pairs if isinstance(v, bytes)}
                records.append(
                    Record(msg.key(), msg.value(), headers, partition, offset, msg.timestamp()[1])
                )
            if len(records) >= expected:
                settled_at = settled_at or time.monotonic()
                if time.monotonic() - settled_at >= idle_s:
                    break
    finally:
        consumer.close()
    return records


def committed_offsets(bootstrap: str, group_id: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset per partition (-1001 where none)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id})
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    try:
        committed = retrying(lambda: consumer.committed(tps, 10), 30.0)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in committed}


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """The high watermark of each partition of `topic`."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "streamer-test-ends"})

    def high(partition: int) -> int:
        _, end = consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)
        return int(end)

    try:
        return {p: retrying(functools.partial(high, p), 30.0) for p in range(partitions)}
    finally:
        consumer.close()


class _Service(Protocol[S_co]):
    def run(self) -> S_co: ...
    def stop(self) -> None: ...


class _Running(Generic[S]):
    """Runs a service's `run()` in a background thread until `stop()`."""

    def __init__(self, service: _Service[S], name: str) -> None:
        self._service = service
        self.stats: S | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self.stats = self._service.run()
        except BaseException as exc:  # surfaced to the test by stop()
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> S:
        self._service.stop()
        self._thread.join(120)
        if self.error is not None:
            raise self.error
        assert self.stats is not None, f"{self._thread.name} thread did not finish"
        return self.stats

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread.is_alive():
            self._service.stop()
            self._thread.join(120)


class RunningAgent(_Running[AgentStats]):
    """Runs an Agent in a background thread: `with RunningAgent(topology) as agent: ...`."""

    def __init__(self, topology: Topology, models: Mapping[str, Model] | None = None) -> None:
        self.agent = Agent(topology, models)
        super().__init__(self.agent, "agent")

    def __enter__(self) -> RunningAgent:
        self.start()
        return self

    def wait_until(self, served_or_dead: int, timeout_s: float = 60.0) -> None:
        """Block until the agent has disposed of that many events (served + dead letters)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.error is None:
            s = self.agent.stats
            if s.served + s.dead_letters >= served_or_dead:
                return
            time.sleep(0.05)
        if self.error is not None:
            raise self.error
        raise TimeoutError(
            f"agent disposed of {self.agent.stats.served} + "
            f"{self.agent.stats.dead_letters} of {served_or_dead} events"
        )


class RunningController(_Running[ControllerStats]):
    """Runs a bandit Controller in a background thread, like `RunningAgent`."""

    def __init__(self, topology: Topology) -> None:
        self.controller = Controller(topology)
        super().__init__(self.controller, "controller")

    def __enter__(self) -> RunningController:
        self.start()
        return self


def unique(prefix: str) -> str:
    """A topic or topology name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
