"""Thin confluent-kafka constructors: every client gets the topology's cluster settings,
librdkafka logs routed to Python logging, and errors reported through one callback."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamer.config import KafkaSettings
from streamer.errors import KafkaUnavailable
from streamer.logs import ALWAYS, RecentMessages, RepeatFilter
from streamer.records import Headers

log = logging.getLogger("streamer.kafka")
_librdkafka_log = logging.getLogger("streamer.kafka.librdkafka")
_librdkafka_said = RecentMessages()
_repeats = RepeatFilter()
# One report per problem and window from both loggers; what librdkafka said is remembered
# before the repeat filter can drop it, so error_cb knows it need not say it again.
_librdkafka_log.addFilter(_librdkafka_said)
_librdkafka_log.addFilter(_repeats)


def flush_log_repeats() -> None:
    """Write the pending "(repeated N times)" summaries (at shutdown: no later line will)."""
    _repeats.flush()


log.addFilter(_repeats)

Settings = Mapping[str, str | int | float | bool]
T = TypeVar("T")


TRANSIENT_CODES = frozenset(
    {
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._WAIT_COORD,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.OFFSET_NOT_AVAILABLE,
        KafkaError.UNSTABLE_OFFSET_COMMIT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
    }
)
"""Codes `retrying` treats as transient although `KafkaError.retriable()` is False.

librdkafka flags retriable errors only in its error-object APIs (transactions, some admin
calls); `commit()`, `committed()`, `get_watermark_offsets()` and `list_topics()` raise bare
codes whose `retriable()` is always False. These are the ones among them that a healthy
cluster clears by itself: coordinator and leader moves, timeouts, a broker restarting.
"""


def retrying(call: Callable[[], T], timeout_s: float) -> T:
    """`call()` again while it raises a transient KafkaException, until `timeout_s` has passed.

    For requests that fail for a moment on a healthy cluster: offsets of a just-created
    partition, a group coordinator that is loading or moving (NOT_COORDINATOR). Errors that
    cannot succeed on a retry (authorization, invalid requests, fatal errors) raise at once.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaException as exc:
            if not _transient(exc) or time.monotonic() > deadline:
                raise
            log.debug("retrying: %s", exc.args[0])
            time.sleep(0.2)


def _transient(exc: KafkaException) -> bool:
    err = exc.args[0] if exc.args else None
    if not isinstance(err, KafkaError) or err.fatal():
        return False
    return bool(err.retriable()) or err.code() in TRANSIENT_CODES


def _error_cb(err: KafkaError) -> None:
    if err.fatal():
        log.error("fatal Kafka error: %s", err, extra={ALWAYS: True})
    elif _librdkafka_said.mention(err.str()):
        # librdkafka's own log line has reported it already (it logs most connection errors).
        log.debug("Kafka: %s", err)
    else:
        log.warning("Kafka: %s", err)


ErrorHook = Callable[[KafkaError], None]
"""Called (from librdkafka's poll) with every client-level error, after it is logged."""


def _base(kafka: KafkaSettings, overrides: Settings, on_error: ErrorHook | None) -> dict[str, Any]:
    def error_cb(err: KafkaError) -> None:
        _error_cb(err)
        if on_error is not None:
            on_error(err)

    # User settings win over our defaults: they know their cluster (security, tuning).
    return {"error_cb": error_cb, "logger": _librdkafka_log, **overrides, **kafka.client_config()}


CommitHook = Callable[[KafkaError | None, list[TopicPartition]], None]
"""Called (from the consumer's poll) with the outcome of every offset commit."""


def make_consumer(
    kafka: KafkaSettings,
    group_id: str,
    on_error: ErrorHook | None = None,
    on_commit: CommitHook | None = None,
    overrides: Settings | None = None,
) -> Consumer:
    """A consumer in `group_id`; offsets are stored and committed only by the caller."""
    config = _base(kafka, {"auto.offset.reset": "earliest", **(overrides or {})}, on_error)
    if on_commit is not None:
        config["on_commit"] = on_commit
    # Not overridable: the agent's at-least-once guarantee rests on committing explicitly.
    config.update(
        {"group.id": group_id, "enable.auto.commit": False, "enable.auto.offset.store": False}
    )
    return Consumer(config)


def make_producer(
    kafka: KafkaSettings, overrides: Settings, on_error: ErrorHook | None = None
) -> Producer:
    """An idempotent producer (acks=all): retries never duplicate or reorder records."""
    return Producer(
        _base(
            kafka,
            {
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
                **overrides,
            },
            on_error,
        )
    )


def produce(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None,
    *,
    headers: Headers | None = None,
    on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
) -> None:
    """`producer.produce`, waiting (serving delivery reports) while its local queue is full."""
    while True:
        try:
            producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)


def produce_many(
    producer: Producer,
    topic: str,
    items: list[tuple[bytes | None, bytes | None]],
    on_delivery: Callable[[KafkaError | None, Message], None],
) -> list[tuple[int, KafkaError]]:
    """(key, value) records to one topic in one `produce_batch` call (a fraction of the
    per-record cost of `produce`; no headers), waiting while the local queue is full.
    Returns (index, error) of the records librdkafka refused before sending any."""
    pending = list(range(len(items)))
    refused: list[tuple[int, KafkaError]] = []
    while pending:
        batch: list[dict[str, Any]] = [{"key": items[i][0], "value": items[i][1]} for i in pending]
        producer.produce_batch(topic, batch, on_delivery=on_delivery)
        full = []
        for i, message in zip(pending, batch, strict=True):
            err = message.get("_error")
            if err is None:
                continue
            if err.code() == KafkaError._QUEUE_FULL:
                full.append(i)
            else:
                refused.append((i, err))
        pending = full
        if pending:
            producer.poll(0.05)
    return refused


def make_admin(
    kafka: KafkaSettings, on_error: ErrorHook | None = None, *, quiet: bool = False
) -> AdminClient:
    """An admin client; its errors and librdkafka's log lines are served by `poll()`.
    `quiet` ones log nothing (probes that may well fail)."""
    config = _base(kafka, {}, on_error)
    if quiet:
        config.pop("error_cb")
        config.pop("logger")
        config["log_level"] = 0
    return AdminClient(config)


METADATA_PROBE_S = 3.0
"""How long `reaches_cluster` waits for a metadata answer."""


def reaches_cluster(client: Consumer | Producer | AdminClient, topic: str) -> bool:
    """Whether `client` gets metadata (naming at least one broker) for `topic` now."""
    try:
        return bool(client.list_topics(topic, timeout=METADATA_PROBE_S).brokers)
    except KafkaException:
        return False


_CREDENTIAL_ERRORS = frozenset(
    {KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED}
)
_STATE_SUFFIX = re.compile(r"\s*\(after \d+ms in state \w+[^)]*\)$")
"""librdkafka's "(after 0ms in state AUTH_HANDSHAKE)": its connection-state machine."""


class _LastError:
    """Keeps the most telling error a client reported: why brokers are down, not that they are."""

    def __init__(self) -> None:
        self.error: KafkaError | None = None

    def __call__(self, err: KafkaError) -> None:
        if err.code() != KafkaError._ALL_BROKERS_DOWN or self.error is None:
            self.error = err

    def reason(self) -> str:
        if self.error is None:
            return ""
        text = " ".join(_STATE_SUFFIX.sub("", self.error.str()).split()).rstrip(" :")
        return f": {text}"

    def hint(self) -> str:
        if self.error is not None and self.error.code() in _CREDENTIAL_ERRORS:
            return "check the security settings (security.protocol, sasl.*, ssl.*) in kafka.config"
        return "check kafka.bootstrap_servers or $STREAMER_BOOTSTRAP_SERVERS"


def wait_for_cluster(
    kafka: KafkaSettings, timeout_s: float, cancelled: Callable[[], bool] = lambda: False
) -> AdminClient:
    """An admin client once the cluster answers a metadata request; else KafkaUnavailable.

    Asks in slices of at most a second, so signal handlers run while a broker is still
    unreachable; once `cancelled()` is true it returns the (unconnected) client at once.
    """
    last = _LastError()
    admin = make_admin(kafka, last)
    deadline = time.monotonic() + timeout_s
    while not cancelled():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            if admin.list_topics(timeout=min(remaining, 1.0)).brokers:
                return admin
        except KafkaException:  # not reachable yet
            time.sleep(0.05)
        finally:
            admin.poll(0)  # serves error_cb: librdkafka's reason, kept by `last`
        if last.error is not None and last.error.code() in _CREDENTIAL_ERRORS:
            break  # refused credentials stay refused: no point waiting out the timeout
    if cancelled():
        return admin
    refused = last.error is not None and last.error.code() in _CREDENTIAL_ERRORS
    when = "" if refused else f" within {timeout_s:.0f}s"
    raise KafkaUnavailable(
        f"cannot reach Kafka at {kafka.bootstrap_servers}{when}{last.reason()} ({last.hint()})"
    )


def missing_topics(admin: AdminClient, topics: Sequence[str], timeout_s: float) -> list[str]:
    """Which of `topics` the cluster does not have."""
    existing = admin.list_topics(timeout=timeout_s).topics
    return [t for t in topics if t not in existing]


class KafkaBatchSource:
    """`BatchSource` over a subscribed consumer: librdkafka waits for size or time itself."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self._held: list[Message] = []
        self._paused = False

    def fetch(self, max_items: int, timeout_s: float) -> list[Message]:
        if self._held:  # taken while the caller only wanted events: these first, in order
            batch, self._held = self._held[:max_items], self._held[max_items:]
            return batch
        return _good(self.consumer.consume(num_messages=max_items, timeout=timeout_s))

    def pause(self) -> None:
        """Stop fetching for the whole assignment (librdkafka drops what it prefetched and,
        on resume, fetches again after the last message it handed out)."""
        self._paused = True
        assigned = self.consumer.assignment()
        if assigned:
            self.consumer.pause(assigned)

    def resume(self) -> None:
        """Fetch again for whatever is assigned now (also partitions assigned while paused)."""
        self._paused = False
        assigned = self.consumer.assignment()
        if assigned:
            self.consumer.resume(assigned)

    def assign(self, partitions: list[TopicPartition]) -> None:
        """Take up `partitions` (in the rebalance callback), paused only while a wait is.

        librdkafka keeps a partition's pause across losing and regaining it: a wait that
        ended while the group session was lost resumed an empty assignment, and the
        partitions that came back stayed paused for good (seen after a 50 s broker freeze)."""
        self.consumer.assign(partitions)
        if self._paused:
            self.consumer.pause(partitions)
        else:
            self.consumer.resume(partitions)

    def serve(self) -> None:
        """Serve the consumer's queue without waiting: rebalance callbacks, commit results
        and errors come only from consume/poll, and librdkafka does not rejoin a group after
        a lost session until the revoke is served. Call it paused: a message that still
        comes out is held for the next `fetch`, and its partition paused."""
        messages = _good(self.consumer.consume(num_messages=HOLD_MAX, timeout=0))
        if messages:
            self._held.extend(messages)
            partitions = {(m.topic(), m.partition()) for m in messages}
            self.consumer.pause([TopicPartition(t, p) for t, p in sorted(partitions)])  # type: ignore[arg-type]

    def forget(self, partitions: list[TopicPartition]) -> None:
        """Drop held messages of partitions this member no longer owns."""
        gone = {(p.topic, p.partition) for p in partitions}
        self._held = [m for m in self._held if (m.topic(), m.partition()) not in gone]


HOLD_MAX = 500
"""The most messages one `KafkaBatchSource.serve` call may take out of the queue."""


def _good(messages: list[Message]) -> list[Message]:
    good = []
    for msg in messages:
        err = msg.error()
        if err is None:
            good.append(msg)
        elif err.fatal():
            raise KafkaException(err)
        else:
            log.warning("consumer: %s", err)
    return good
