"""Reading and writing the control and status topics (agents, `streamer control`, the
controller). Both are compacted and keyed: control records by topology name, agents'
reports by agent id. Readers assign every partition from the beginning (no consumer group)
and know when they have read everything there is by librdkafka's partition-EOF events."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from streamer.config import KafkaSettings
from streamer.errors import StreamerError
from streamer.kafka.clients import ErrorHook, make_consumer, make_producer

READ_TIMEOUT_S = 30.0
"""How long reading a control or status topic to its end may take."""


@dataclass(frozen=True)
class Entry:
    """One record of a control or status topic."""

    key: str
    value: bytes | None
    """None for a tombstone (an agent that stopped)."""
    offset: int
    partition: int
    timestamp_ms: int


class TopicReader:
    """Follows a compacted topic from its beginning without joining a consumer group."""

    def __init__(self, kafka: KafkaSettings, topic: str, on_error: ErrorHook | None = None):
        self.topic = topic
        # assign() never joins the group; the id only satisfies librdkafka.
        self.consumer: Consumer = make_consumer(
            kafka,
            f"streamer.reader.{topic}",
            on_error,
            # A record must reach followers fast; an idle fetch every 100 ms is cheap.
            overrides={"enable.partition.eof": True, "fetch.wait.max.ms": 100},
        )
        self._partitions: set[int] = set()
        self._at_end: set[int] = set()

    def start(self, timeout_s: float = READ_TIMEOUT_S) -> None:
        """Assign every partition of the topic from its beginning."""
        try:
            metadata = self.consumer.list_topics(self.topic, timeout=timeout_s)
        except KafkaException as exc:
            raise StreamerError(f"cannot read {self.topic}: {exc.args[0]}") from None
        found = metadata.topics.get(self.topic)
        if found is None or found.error is not None or not found.partitions:
            why = found.error.str() if found is not None and found.error else "not found"
            raise StreamerError(f"topic {self.topic}: {why}")
        self._partitions = set(found.partitions)
        self.consumer.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in sorted(self._partitions)]
        )

    @property
    def at_end(self) -> bool:
        """Whether every partition has been read up to its end (as of the last poll)."""
        return self._at_end >= self._partitions

    def poll(self, timeout_s: float, max_records: int = 500) -> list[Entry]:
        """Records that arrived, oldest first per partition."""
        entries = []
        for msg in self.consumer.consume(max_records, timeout_s):
            err = msg.error()
            partition = msg.partition() or 0
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._at_end.add(partition)
                elif err.fatal():
                    raise KafkaException(err)
                continue
            self._at_end.discard(partition)
            entries.append(_entry(msg))
        return entries

    def read_to_end(self, timeout_s: float = READ_TIMEOUT_S) -> Iterator[Entry]:
        """Every record up to the current end; StreamerError if that takes over `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not self.at_end:
            if time.monotonic() > deadline:
                raise StreamerError(f"reading {self.topic} did not finish in {timeout_s:.0f}s")
            yield from self.poll(0.2)

    def close(self) -> None:
        self.consumer.close()


def _entry(msg: Message) -> Entry:
    raw = msg.key()
    _, ts = msg.timestamp()
    return Entry(
        key=raw.decode("utf-8", "backslashreplace") if raw else "",
        value=msg.value(),
        offset=msg.offset() or 0,
        partition=msg.partition() or 0,
        timestamp_ms=ts,
    )


def read_all(kafka: KafkaSettings, topic: str, timeout_s: float = READ_TIMEOUT_S) -> list[Entry]:
    """Every record the topic holds now, oldest first per partition."""
    reader = TopicReader(kafka, topic)
    try:
        reader.start(timeout_s)
        return list(reader.read_to_end(timeout_s))
    finally:
        reader.close()


def publish(
    kafka: KafkaSettings,
    topic: str,
    key: str,
    value: bytes | None,
    timeout_s: float = READ_TIMEOUT_S,
) -> int:
    """Write one record and wait for its acknowledgement; returns its offset."""
    # One record: idempotence buys nothing and its producer-id handshake delays the send.
    producer = make_producer(kafka, {"linger.ms": 0, "enable.idempotence": False})
    result: list[Message] = []
    errors: list[KafkaError] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            result.append(msg)

    producer.produce(topic, value, key.encode(), on_delivery=delivered)
    producer.flush(timeout_s)
    if errors or not result:
        why = errors[0].str() if errors else f"not acknowledged within {timeout_s:.0f}s"
        raise StreamerError(f"cannot write to {topic}: {why}")
    return result[0].offset() or 0
