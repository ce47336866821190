"""The benchmark's contenders, each run in a process of its own by `benchmarks.throughput`.

    python -m benchmarks.contenders SPEC_JSON

SPEC_JSON (a `Spec` as JSON) names the contender (`kind`), its broker, topics, group and
how many events it serves before it exits. Every contender prints `ready` on stdout once
the group gave it its partitions, and one `result {...}` line (JSON) when it has served
them all and committed their offsets; then it exits 0.

* `limit`: the best bare confluent-kafka loop: `consume` in batches, `produce_batch` each
  message unchanged (key and value), offsets committed once a batch is acknowledged (at most
  max_in_flight batches unacknowledged). `produce_batch: false` produces one at a time.
* `limit-job`: the limit's loop doing the engine's job with nothing else: per batch, decode
  every event (fastavro), one ONNX call, and per event one JSON output and one JSON lake
  record, both `produce_batch`ed. No dead letters, routing, size checks or metrics: what
  the libraries cost a Python loop for this work, the floor under the engine.
* `per-event`: what a plain loop looks like: `poll` one, decode it (fastavro), score it
  (one ONNX row), `produce` one JSON output; offsets committed every second up to what is
  acknowledged.
* `engine`: `streamer.agent.Agent` serving the spec's topology (`RunningAgent`).

The hand-written loops use the engine's client constructors (`make_consumer`,
`make_producer`: idempotent, acks=all, lz4, linger.ms 5), so they write with the
same delivery settings as the engine. Faust runs as its own worker, on its own client
(aiokafka) defaults: `benchmarks.faust_app`.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import onnxruntime as ort
import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streamer.config import KafkaSettings, Topology
from streamer.kafka.clients import make_consumer, make_producer
from streamer.models import session_options
from streamer.records import lake_record, output_record

KINDS = ("limit", "limit-job", "per-event", "engine")
COMMIT_EVERY_S = 1.0
"""How often the hand-written loops commit what is acknowledged (and once at the end)."""


@dataclass
class Spec:
    kind: str
    bootstrap: str
    input: str
    output: str
    group: str
    events: int
    timeout_s: float = 600.0
    batch_size: int = 512
    max_wait_ms: int = 5
    max_in_flight: int = 4
    model: str = ""
    schema: str = ""
    features: list[str] = field(default_factory=list)
    topology: dict[str, Any] | None = None
    """The engine's topology (`Topology.model_dump(mode="json", by_alias=True)`)."""
    produce_batch: bool = True
    """limit: one `produce_batch` call per batch (False: one `produce` per message)."""
    lake: str = ""
    """limit-job: the lake topic."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Spec:
        return cls(**json.loads(text))


class ContenderError(RuntimeError):
    """A contender that failed to deliver, or did not finish in time."""


def announce(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class _Acks:
    """Batches produced and not yet acknowledged, oldest first; what may be committed."""

    def __init__(self) -> None:
        self.pending: deque[tuple[list[int], dict[tuple[str, int], int]]] = deque()
        self.committable: dict[tuple[str, int], int] = {}
        self.failures: list[str] = []
        self.committed_at = time.monotonic()

    def open(self, messages: list[Message]) -> tuple[list[int], Callable[..., None]]:
        """A new batch (its remaining-records counter, its delivery callback)."""
        offsets: dict[tuple[str, int], int] = {}
        for m in messages:
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            assert topic is not None and partition is not None and offset is not None
            offsets[(topic, partition)] = offset + 1
        remaining = [0]
        failures = self.failures

        def on_delivery(err: KafkaError | None, _msg: Message | None) -> None:
            remaining[0] -= 1
            if err is not None:
                failures.append(str(err))

        self.pending.append((remaining, offsets))
        return remaining, on_delivery

    def settle(self) -> bool:
        """Move fully acknowledged batches (in order) to `committable`; True if any moved."""
        if self.failures:
            raise ContenderError(f"delivery failed: {self.failures[:3]}")
        moved = False
        while self.pending and self.pending[0][0][0] == 0:
            self.committable.update(self.pending.popleft()[1])
            moved = True
        return moved

    def offsets(self) -> list[TopicPartition]:
        return [TopicPartition(t, p, o) for (t, p), o in self.committable.items()]

    def turn(self, producer: Producer, consumer: Consumer) -> None:
        """Serve delivery reports; commit what is acknowledged every COMMIT_EVERY_S."""
        producer.poll(0)
        self.settle()
        if self.committable and time.monotonic() - self.committed_at >= COMMIT_EVERY_S:
            consumer.commit(offsets=self.offsets(), asynchronous=True)
            self.committed_at = time.monotonic()


def _clients(spec: Spec) -> tuple[Consumer, Producer]:
    kafka = KafkaSettings(bootstrap_servers=spec.bootstrap)
    consumer = make_consumer(kafka, spec.group)
    producer = make_producer(kafka, {})

    def on_assign(_c: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions:
            announce("ready")

    consumer.subscribe([spec.input], on_assign=on_assign)
    return consumer, producer


def _finish(
    spec: Spec, consumer: Consumer, producer: Producer, acks: _Acks, deadline: float
) -> None:
    if producer.flush(max(deadline - time.monotonic(), 1.0)):
        raise ContenderError("records unacknowledged at the deadline")
    acks.settle()
    if acks.committable:
        consumer.commit(offsets=acks.offsets(), asynchronous=False)
    consumer.close()


def _good(messages: list[Message]) -> list[Message]:
    good = []
    for m in messages:
        err = m.error()
        if err is None:
            good.append(m)
        elif err.fatal():
            raise KafkaException(err)
    return good


def _produce_batch(
    producer: Producer, topic: str, records: list[dict[str, Any]], on_delivery: Callable[..., None]
) -> int:
    """`produce_batch` all of `records` (what a full local queue refused, again); how many."""
    queued = 0
    while records:
        queued += producer.produce_batch(topic, records, on_delivery=on_delivery)
        records = [{"key": d["key"], "value": d["value"]} for d in records if "_error" in d]
        if records:  # the local queue is full: serve delivery reports, then the rest
            producer.poll(0.05)
    return queued


def run_limit(spec: Spec) -> dict[str, Any]:
    """Consume up to batch_size, `produce_batch` them unchanged (limit-job: scored, output
    and lake); commit acknowledged batches in order; at most max_in_flight batches
    unacknowledged."""
    deadline = time.monotonic() + spec.timeout_s
    job = BatchScorer(spec) if spec.kind == "limit-job" else None
    consumer, producer = _clients(spec)
    acks = _Acks()
    consumed = batches = 0
    wait_s = spec.max_wait_ms / 1000.0
    while consumed < spec.events:
        if time.monotonic() > deadline:
            raise ContenderError(f"limit: {consumed} of {spec.events} consumed in time")
        while len(acks.pending) >= spec.max_in_flight:
            producer.poll(0.05)
            acks.settle()
        messages = _good(consumer.consume(spec.batch_size, wait_s))
        if messages:
            remaining, on_delivery = acks.open(messages)
            if job is not None:
                outputs, lake = job.score_batch(messages)
                remaining[0] += _produce_batch(producer, spec.output, outputs, on_delivery)
                remaining[0] += _produce_batch(producer, spec.lake, lake, on_delivery)
            elif spec.produce_batch:
                unchanged = [{"key": m.key(), "value": m.value()} for m in messages]
                remaining[0] += _produce_batch(producer, spec.output, unchanged, on_delivery)
            else:
                for m in messages:
                    while True:
                        try:
                            producer.produce(
                                spec.output, m.value(), m.key(), on_delivery=on_delivery
                            )
                            break
                        except BufferError:
                            producer.poll(0.05)
                    remaining[0] += 1
            consumed += len(messages)
            batches += 1
        acks.turn(producer, consumer)
    _finish(spec, consumer, producer, acks, deadline)
    return {"served": consumed, "batches": batches}


class Scorer:
    """Decode one Avro event and score it as one ONNX row (the per-event loop, Faust)."""

    def __init__(self, spec: Spec) -> None:
        self.schema = fastavro.parse_schema(json.loads(Path(spec.schema).read_text()))
        self.session = ort.InferenceSession(
            spec.model, sess_options=session_options(), providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.features = spec.features
        self.variant = Path(spec.model).stem

    def score(self, key: bytes | None, value: bytes, ts_event_ms: int) -> bytes:
        record: dict[str, Any] = fastavro.schemaless_reader(io.BytesIO(value), self.schema, None)  # type: ignore[assignment]
        row = np.array([[record[f] for f in self.features]], dtype=np.float32)
        results = self.session.run(self.outputs, {self.input_name: row})
        outputs = {
            name: np.asarray(v)[0].tolist() for name, v in zip(self.outputs, results, strict=True)
        }
        return orjson.dumps(
            output_record(
                event_id=key.decode() if key else str(record["id"]),
                variant=self.variant,
                version=self.variant,
                outputs=outputs,
                ts_event=ts_event_ms,
                ts_predicted=int(time.time() * 1000),
            )
        )


class BatchScorer(Scorer):
    """Decode a batch, score it with one ONNX call, encode an output and a lake record per
    event (the limit-job loop)."""

    def score_batch(
        self, messages: list[Message]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        read, schema = fastavro.schemaless_reader, self.schema
        records: list[dict[str, Any]] = [
            read(io.BytesIO(m.value()), schema, None)  # type: ignore[arg-type,misc]
            for m in messages
        ]
        features = self.features
        matrix = np.array([[r[f] for f in features] for r in records], dtype=np.float32)
        results = self.session.run(self.outputs, {self.input_name: matrix})
        columns = {
            name: np.asarray(v).tolist() for name, v in zip(self.outputs, results, strict=True)
        }
        now = int(time.time() * 1000)
        outputs, lake = [], []
        for i, (m, r) in enumerate(zip(messages, records, strict=True)):
            key = m.key()
            record = output_record(
                event_id=key.decode() if key else str(r["id"]),
                variant=self.variant,
                version=self.variant,
                outputs={name: column[i] for name, column in columns.items()},
                ts_event=m.timestamp()[1],
                ts_predicted=now,
            )
            outputs.append({"key": key, "value": orjson.dumps(record)})
            entry = lake_record(
                record,
                shadow=False,
                features=[r[f] for f in features],
                latency_ms=0.0,
                topology=self.variant,
                propensity=1.0,
            )
            lake.append({"key": key, "value": orjson.dumps(entry)})
        return outputs, lake


def run_per_event(spec: Spec) -> dict[str, Any]:
    """Poll one, decode, score one row, produce one; commit what is acknowledged each second."""
    deadline = time.monotonic() + spec.timeout_s
    scorer = Scorer(spec)
    consumer, producer = _clients(spec)
    acks = _Acks()
    served = 0
    while served < spec.events:
        if time.monotonic() > deadline:
            raise ContenderError(f"per-event: {served} of {spec.events} served in time")
        msg = consumer.poll(0.1)
        if msg is not None and _good([msg]):
            value = scorer.score(msg.key(), msg.value(), msg.timestamp()[1])  # type: ignore[arg-type]
            remaining, on_delivery = acks.open([msg])
            while True:
                try:
                    producer.produce(spec.output, value, msg.key(), on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
            remaining[0] += 1
            served += 1
        acks.turn(producer, consumer)
    _finish(spec, consumer, producer, acks, deadline)
    return {"served": served}


def run_engine(spec: Spec) -> dict[str, Any]:
    """The agent until it has served (or dead-lettered) `events`; then stopped (it drains
    and commits)."""
    from streamer.testing import RunningAgent  # noqa: PLC0415 - the engine's imports only here

    assert spec.topology is not None, "engine needs a topology"
    topology = Topology.model_validate(spec.topology)
    deadline = time.monotonic() + spec.timeout_s
    with RunningAgent(topology) as running:
        while not running.agent.assigned:
            if running.error is not None:
                raise running.error
            if time.monotonic() > deadline:
                raise ContenderError("engine: no partitions assigned in time")
            time.sleep(0.02)
        announce("ready")
        running.wait_until(spec.events, max(deadline - time.monotonic(), 1.0))
        stats = running.stop()
    return {
        "served": stats.served,
        "dead_letters": stats.dead_letters,
        "batches": stats.batches,
        "largest_batch": stats.largest_batch,
        "mean_batch": round(stats.served / stats.batches, 1) if stats.batches else 0.0,
    }


RUNNERS: dict[str, Callable[[Spec], dict[str, Any]]] = {
    "limit": run_limit,
    "limit-job": run_limit,
    "per-event": run_per_event,
    "engine": run_engine,
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    spec = Spec.from_json(args[0])
    result = RUNNERS[spec.kind](spec)
    announce("result " + json.dumps(result))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except ContenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
