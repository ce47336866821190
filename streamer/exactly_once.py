"""Exactly-once: Kafka transactions carry a batch's outputs, lake records, dead letters and
its input offsets together (KIP-447: the offsets go with the consumer's group metadata, so
a member that lost its partitions in a rebalance is fenced instead of writing twice).

One transaction collects batches for `exactly_once.commit_interval_ms` (or until
`max_in_flight_batches` are in it), then commits. Anything that fails inside it aborts it:
nothing it wrote becomes visible to read_committed consumers, and the consumer is rewound to
where the transaction began, so the same events are served again in the next one.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from streamer.assembly import InputMessage, Outgoing, coordinates
from streamer.commits import (
    ClientsLost,
    InFlightBatch,
    Partition,
    Positions,
    Rescue,
    leave_group,
    produce_records,
)
from streamer.errors import DeliveryFailed
from streamer.kafka.clients import KafkaBatchSource
from streamer.metrics import Metrics

log = logging.getLogger("streamer.exactly_once")

INSTANCE_ENV = "STREAMER_INSTANCE_ID"
"""A stable name for this agent replica (a StatefulSet pod name): its transactional id, so a
restart aborts the transaction its predecessor left open at once."""
MAX_ABORTS = 10
MAX_TRANSACTION_BATCHES = 256
"""A transaction's batches at most: what an abort makes the agent serve again (the records
themselves go out as they are produced; the transaction only holds their offsets)."""
ATTEMPT_S = 5.0
"""Longest single attempt of a transaction call before the consumer is served again."""
"""Aborted transactions in a row (no commit between them) before the agent gives up; the
waits after them (none, then 2, 4, 8, 16, 30 s) outlast a broker restart."""
FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED})
"""A newer producer with this transactional id exists: this process is a zombie."""
ABORT_WAIT_S = 60.0
"""How long aborting may wait for the transaction coordinator."""


def transactional_id(group_id: str) -> str:
    """`<group>.<instance>`: the instance from STREAMER_INSTANCE_ID, else host and pid."""
    instance = os.environ.get(INSTANCE_ENV) or f"{socket.gethostname()}-{os.getpid()}"
    return f"{group_id}.{instance}"


class ExactlyOnce:
    """The `Committer` of `guarantee: exactly_once` (see the module docstring)."""

    def __init__(
        self,
        consumer: Consumer,
        producer: Producer,
        max_in_flight: int,
        metrics: Metrics,
        *,
        commit_interval_s: float,
        drain_timeout_s: float,
        transactional_id: str,
        source: KafkaBatchSource | None = None,
    ) -> None:
        """`producer` is transactional (`transactional.id` = `transactional_id`) and not
        yet initialised."""
        self.transactional_id = transactional_id
        self.consumer = consumer
        self.producer = producer
        self.source = source
        self.max_in_flight = max_in_flight
        self.metrics = metrics
        self.commit_interval_s = commit_interval_s
        self.drain_timeout_s = drain_timeout_s
        self.assigned: set[Partition] = set()
        self.progress_at = time.monotonic()
        self._positions = Positions()
        self._batches: list[InFlightBatch] = []
        self._began: dict[Partition, int] = {}
        """Per input partition, its first offset in the open transaction (where to rewind)."""
        self._open_since: float | None = None
        self._aborts = 0
        self._initialised = False
        self._in_callback = False
        """Inside a rebalance callback: nothing there may consume, wait or rewind."""
        self._lost: ClientsLost | None = None
        """Found in a rebalance callback (where nothing may raise): raised at the next turn."""
        self._stopping: Callable[[], bool] = lambda: False
        self._check: Callable[[], None] = lambda: None

    @property
    def in_flight(self) -> int:
        return len(self._batches)

    def _init(self) -> None:
        if not self._initialised:
            # Fences any earlier producer with this transactional id and aborts what it left.
            self.producer.init_transactions(self.drain_timeout_s)
            self._initialised = True

    # -- the batch loop -------------------------------------------------------------------
    def fresh(self, messages: Sequence[InputMessage]) -> list[Any]:
        return self._positions.take(messages, self.assigned)

    def begin(
        self, messages: Sequence[InputMessage], on_done: Callable[[], None], rescue: Rescue
    ) -> InFlightBatch:
        self._init()
        if self._open_since is None:
            self.producer.begin_transaction()
            self._open_since = time.monotonic()
        offsets: dict[Partition, int] = {}
        for topic, partition, offset in (coordinates(m) for m in messages):
            tp = (topic, partition)
            self._began.setdefault(tp, offset)
            offsets[tp] = max(offsets.get(tp, 0), offset + 1)
        batch = InFlightBatch(offsets, messages, on_done, rescue)
        self._batches.append(batch)
        return batch

    def produce(self, batch: InFlightBatch, records: Sequence[Outgoing]) -> None:
        try:
            produce_records(self.producer, batch, records)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and (
                err.txn_requires_abort() or err.code() == KafkaError._STATE
            ):
                # The transaction failed under this batch (a broker restart can leave the
                # producer's sequence numbers behind): abort it and serve it all again.
                self._abort(f"the transaction failed: {err.str()}")
                return
            raise

    def abandon(self, batch: InFlightBatch) -> None:
        batch.abandoned = True
        if self._open_since is not None:  # not aborted already
            self._abort("serving a batch raised")

    def poll(self) -> None:
        self._raise_lost()
        self.producer.poll(0)
        if self._open_since is not None and (
            time.monotonic() - self._open_since >= self.commit_interval_s
        ):
            self._commit()

    def wait_for_room(
        self, stopping: Callable[[], bool], check: Callable[[], None] = lambda: None
    ) -> None:
        """A transaction holds at most `MAX_TRANSACTION_BATCHES` batches: commit it when
        full (the commit interval usually comes first). `stopping` and `check` also serve
        the waits of later commits (see `_retrying`)."""
        self._stopping, self._check = stopping, check
        self._raise_lost()
        if len(self._batches) >= MAX_TRANSACTION_BATCHES and not stopping():
            self._commit()
        check()

    def discard(self) -> None:
        """The clients lost the cluster: whatever the open transaction holds is aborted by
        the broker when it times out; the next clients start at the committed offsets."""
        self.producer.purge()
        self._reset()
        self._forget([TopicPartition(t, p) for t, p in self.assigned])
        leave_group(self.consumer)

    def close(self, timeout_s: float) -> None:
        try:
            if self._open_since is not None:
                self._commit(timeout_s)
        finally:
            self.consumer.close()

    # -- rebalances ---------------------------------------------------------------------------
    def on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.source is not None:
            self.source.assign(partitions)
        self.assigned |= {(p.topic, p.partition) for p in partitions}
        self.progress_at = time.monotonic()
        log.info("assigned %s", sorted(p.partition for p in partitions))

    def on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Hand over with everything served committed (the next owner starts after it).
        if self._open_since is not None:
            self._in_callback = True
            try:
                self._commit(self.drain_timeout_s)
            finally:
                self._in_callback = False
        self._forget(partitions)

    def on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member may own them already: what the open transaction holds must not
        # commit (the broker would fence the offsets anyway).
        if self._open_since is not None:
            self._abort_in_callback("partitions lost")
        self._positions.forget((p.topic, p.partition) for p in partitions)
        self._forget(partitions)

    def on_commit(self, _err: KafkaError | None, _partitions: list[TopicPartition]) -> None:
        """Offsets commit inside transactions; the consumer never commits on its own."""

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self.assigned.discard((p.topic, p.partition))
        if self.source is not None:
            self.source.forget(partitions)

    # -- transactions ---------------------------------------------------------------------------
    def _commit(self, timeout_s: float | None = None) -> None:
        """Commit the open transaction with the input offsets of its batches; abort it
        (and rewind) if the transaction cannot commit; raise if the producer was fenced.

        A transient failure (the coordinator away, a broker restarting) is retried while
        the consumer is served, paused, so the group session survives the wait: without a
        limit in the batch loop, within `timeout_s` when stopping or handing over."""
        offsets: dict[Partition, int] = {}
        for batch in self._batches:
            offsets.update(batch.next_offsets)
        owned = [
            TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in self.assigned
        ]
        deadline = time.monotonic() + timeout_s if timeout_s is not None else math.inf
        try:
            if owned:
                self._retrying(
                    lambda t: self.producer.send_offsets_to_transaction(
                        owned, self.consumer.consumer_group_metadata(), t
                    ),
                    deadline,
                )
            self._retrying(self.producer.commit_transaction, deadline)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.txn_requires_abort():
                self._abort(err.str())
                return
            if isinstance(err, KafkaError) and (err.code() in FENCED or err.fatal()):
                # Fenced: by another agent with this transactional id, or by the coordinator
                # itself, which ends a transaction left open past its timeout (an outage)
                # with a new epoch. New clients tell the two apart: the first takes over
                # again (and the agent gives up if that keeps happening), the second goes on.
                raise ClientsLost(
                    f"the transactional producer {self.transactional_id} was fenced or failed "
                    f"({err.str()})"
                ) from None
            raise DeliveryFailed(
                f"exactly-once: committing the transaction failed ({exc}); it is not "
                "visible to read_committed consumers and its events will be served again"
            ) from None
        failures = [f for b in self._batches for f in b.failures]
        done = list(self._batches)
        self._reset()
        self._aborts = 0
        self.progress_at = time.monotonic()
        if failures:  # cannot happen after a successful commit; never swallow it
            raise DeliveryFailed(f"{len(failures)} record(s) failed in a committed transaction")
        for batch in done:
            if batch.on_done is not None:
                batch.on_done()
        self.metrics.transactions.labels("committed").inc()

    def _retrying(self, call: Callable[[float], object], deadline: float) -> None:
        """`call(timeout)` until it succeeds, raises a non-retriable error, or `deadline`
        passes (once the agent is stopping: the drain timeout from then on)."""
        paused = False
        try:
            while True:
                try:
                    call(min(ATTEMPT_S, max(deadline - time.monotonic(), 0.1)))
                    return
                except KafkaException as exc:
                    err = exc.args[0] if exc.args else None
                    if not isinstance(err, KafkaError) or not err.retriable():
                        raise
                    if self._stopping() and math.isinf(deadline):
                        deadline = time.monotonic() + self.drain_timeout_s
                    if time.monotonic() >= deadline:
                        raise
                    log.warning("transaction waits for the cluster: %s", err.str())
                if self.source is not None and not self._in_callback:  # no consume inside
                    if not paused:
                        self.source.pause()
                        paused = True
                    self.source.serve()
                    self._check()
        finally:
            if paused and self.source is not None:
                self.source.resume()

    def _abort(self, why: str, *, rewind: bool = True) -> None:
        """Abort the open transaction (nothing of it becomes visible) and go back to where
        it began. Aborts in a row back off (a cluster that is away makes every transaction
        fail) and, after MAX_ABORTS, give up."""
        began = dict(self._began)
        try:
            self._retrying(self.producer.abort_transaction, time.monotonic() + ABORT_WAIT_S)
        except KafkaException as exc:
            lost = _unabortable(exc)
            if lost is not None:
                raise lost from None
        finally:
            self._reset()
        self.metrics.transactions.labels("aborted").inc()
        self._aborts += 1
        log.warning("transaction aborted (%s); its events are served again", why)
        if self._in_callback:
            return  # the partitions are being handed over: their next owner serves them
        if rewind:
            self._rewind(began)
        if self._aborts >= MAX_ABORTS:
            raise DeliveryFailed(
                f"exactly-once: {self._aborts} transactions aborted in a row (last: {why})"
            )
        self._back_off(min(2.0 ** (self._aborts - 1), 30.0) if self._aborts > 1 else 0.0)

    def _abort_in_callback(self, why: str) -> None:
        """Abort from a rebalance callback: once, without serving the consumer (no consume
        may run inside its own callback) and without waiting; what cannot be aborted here
        recreates the clients at the next turn of the loop."""
        try:
            self.producer.abort_transaction(ATTEMPT_S)
        except KafkaException as exc:
            self._lost = _unabortable(exc)
        finally:
            self._reset()
        self.metrics.transactions.labels("aborted").inc()
        log.warning("transaction aborted (%s); its events are served again", why)

    def _back_off(self, seconds: float) -> None:
        """Wait before the next transaction, serving the consumer (paused) meanwhile."""
        if seconds <= 0 or self.source is None:
            return
        until = time.monotonic() + seconds
        self.source.pause()
        try:
            while time.monotonic() < until and not self._stopping():
                self.source.serve()
                self._check()
                time.sleep(0.05)
        finally:
            self.source.resume()

    def _rewind(self, began: dict[Partition, int]) -> None:
        """Back to where the aborted transaction began, so its events are served again."""
        owned = [TopicPartition(t, p, o) for (t, p), o in began.items() if (t, p) in self.assigned]
        if self.source is not None:
            self.source.forget(owned)  # nothing held back for them may be served first
        for tp in owned:
            self._positions.rewind((tp.topic, tp.partition), tp.offset)
            self.consumer.seek(tp)

    def _raise_lost(self) -> None:
        lost, self._lost = self._lost, None
        if lost is not None:
            raise lost

    def _reset(self) -> None:
        self._batches = []
        self._began = {}
        self._open_since = None


def _unabortable(exc: KafkaException) -> ClientsLost | None:
    """None when there was nothing left to abort (the producer ended the transaction itself,
    after an epoch bump: "Operation not valid in state Ready"); else the clients must go: a
    new producer with the same transactional id fences this one and aborts what is open, and
    a new consumer starts from the committed offsets."""
    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError) and err.code() == KafkaError._STATE:
        return None
    why = err.str() if isinstance(err, KafkaError) else str(exc)
    return ClientsLost(f"the transaction can neither commit nor abort ({why})")
