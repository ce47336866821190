"""`streamer demo`: the whole path on the local broker, with a live view and a summary.

Starts (or reuses) the local Kafka, trains the demo models if missing, creates the
topology's topics, streams synthetic transactions with 1% garbage at a steady rate, serves
them with an in-process agent and finally reads the output topic back to report exact
end-to-end latency and the variant split.
"""

from __future__ import annotations

import io
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import fastavro
import numpy as np
from confluent_kafka import Consumer, TopicPartition

from streamer.agent import Agent, AgentStats
from streamer.codecs.avro import load_schema
from streamer.config import Topology, load_topology
from streamer.demo.data import generate_transactions
from streamer.demo.train import ensure_models
from streamer.errors import KafkaUnavailable, StreamerError
from streamer.kafka.admin import create_topics
from streamer.kafka.clients import make_producer, retrying, wait_for_cluster
from streamer.kafka.local import LocalKafka, start
from streamer.validate import validate

GARBAGE_SHARE = 0.01
"""Share of deliberately broken events, so the dead-letter path shows up in the summary."""


@dataclass(frozen=True)
class DemoSummary:
    events: int
    served: int
    dead_letters: dict[str, int]
    seconds: float
    throughput: float
    latency_ms: dict[str, float]
    variants: dict[str, int]
    shadow_scored: int


def run_demo(
    topology_path: Path, events: int, rate: float, echo: Callable[[str], None]
) -> DemoSummary:
    """Run the demo end to end; `echo` receives the live view and progress lines."""
    if not topology_path.exists():
        raise StreamerError(
            f"{topology_path}: not found; run the demo from the repository root or pass --topology"
        )
    topology = load_topology(topology_path)
    model_dirs = {v.model.parent for v in topology.variants}
    for directory in sorted(model_dirs):
        missing = [v.model.name for v in topology.variants if not v.model.exists()]
        if missing:
            echo(f"training demo models into {directory} ({', '.join(missing)}) ...")
        ensure_models(directory)
    _, problems = validate(topology_path)
    if problems:
        raise StreamerError(str(problems[0]))

    if _is_local(topology.kafka.bootstrap_servers) and not _answers(topology):
        broker = LocalKafka(port=int(topology.kafka.bootstrap_servers.rsplit(":", 1)[1]))
        result = start(broker)
        echo(
            f"Kafka {'already running' if result.already_running else 'started'} at "
            f"{result.bootstrap}"
        )
    for t in create_topics(topology):
        echo(f"topic {t.topic}: {'created' if t.created else 'exists'} ({t.partitions} partitions)")

    start_offsets = _end_offsets(topology)
    agent = Agent(topology)
    runner = threading.Thread(target=_run_agent, args=(agent,), daemon=True)
    errors: list[BaseException] = []
    runner.start()
    producer = threading.Thread(
        target=_produce_events, args=(topology, events, rate, errors), daemon=True
    )
    began = time.monotonic()
    producer.start()
    _live_view(agent.stats, events, began, echo, errors)
    agent.stop()
    runner.join(120)
    if errors:
        raise StreamerError(f"demo failed: {errors[0]}")
    return _summarise(topology, agent, events, start_offsets, time.monotonic() - began)


def _run_agent(agent: Agent) -> None:
    agent.run()


def _answers(topology: Topology) -> bool:
    try:
        wait_for_cluster(topology.kafka, 3.0)
    except KafkaUnavailable:
        return False
    return True


def _is_local(bootstrap: str) -> bool:
    host = bootstrap.split(",", maxsplit=1)[0].rsplit(":", 1)[0]
    return host in ("localhost", "127.0.0.1") and "," not in bootstrap


def _produce_events(topology: Topology, n: int, rate: float, errors: list[BaseException]) -> None:
    """Stream `n` events at `rate` per second, GARBAGE_SHARE of them broken."""
    try:
        assert topology.input.schema_ is not None, "the demo topology reads Avro"
        schema = load_schema(topology.input.schema_)
        producer = make_producer(topology.kafka, {"linger.ms": 1})
        run = time.strftime("%H%M%S")
        rng = random.Random(run)  # noqa: S311 - demo garbage, not security
        began = time.monotonic()
        events = generate_transactions(n, seed=int(run), start_ms=int(time.time() * 1000))
        for sent, event in enumerate(events):
            event["id"] = f"{run}-{event['id']}"
            if rng.random() < GARBAGE_SHARE:
                value = rng.randbytes(rng.randint(0, 12))
            else:
                buf = io.BytesIO()
                fastavro.schemaless_writer(buf, schema, event)
                value = buf.getvalue()
            ahead = sent / rate - (time.monotonic() - began)
            if ahead > 0.001:
                producer.poll(ahead)
            while True:
                try:
                    producer.produce(topology.input.topic, value, str(event["id"]).encode())
                    break
                except BufferError:
                    producer.poll(0.05)
        if producer.flush(60):
            raise StreamerError("demo events were not all acknowledged within 60 s")
    except BaseException as exc:  # reported by the live view
        errors.append(exc)


def _live_view(
    stats: AgentStats,
    events: int,
    began: float,
    echo: Callable[[str], None],
    errors: list[BaseException],
) -> None:
    last_done, last_t = 0, began
    deadline = began + max(events / 500.0, 120.0)
    while time.monotonic() < deadline and not errors:
        time.sleep(1.0)
        done = stats.served + stats.dead_letters
        now = time.monotonic()
        echo(
            f"  t={now - began:5.1f}s  consumed {stats.consumed:>7}  served {stats.served:>7}"
            f"  dead letters {stats.dead_letters:>4}  {(done - last_done) / (now - last_t):8.0f}"
            f" ev/s  batches {stats.batches}"
        )
        last_done, last_t = done, now
        if done >= events:
            return
    if not errors:
        errors.append(
            TimeoutError(
                f"only {stats.served + stats.dead_letters} of {events} events were served in time"
            )
        )


def _end_offsets(topology: Topology) -> dict[int, int]:
    """Where this run's outputs will start, per partition of the output topic."""
    consumer = _reader(topology)
    topic = topology.output.topic
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        return retrying(
            lambda: {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in partitions
            },
            30.0,
        )
    finally:
        consumer.close()


def _reader(topology: Topology) -> Consumer:
    return Consumer(
        {
            **topology.kafka.client_config(),
            "group.id": "streamer-demo-reader",
            "enable.auto.commit": False,
        }
    )


def _summarise(
    topology: Topology, agent: Agent, events: int, start: dict[int, int], seconds: float
) -> DemoSummary:
    """Read back this run's outputs for exact latency and the served variant split."""
    stats = agent.stats
    consumer = _reader(topology)
    consumer.assign([TopicPartition(topology.output.topic, p, o) for p, o in start.items()])
    latencies: list[int] = []
    variants: Counter[str] = Counter()
    deadline = time.monotonic() + 30
    while len(latencies) < stats.served and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 0.5):
            if msg.error():
                continue
            value = json.loads(msg.value() or b"{}")
            latencies.append(value["ts_predicted"] - value["ts_event"])
            variants[value["variant"]] += 1
    consumer.close()
    lat = np.array(latencies or [0], dtype=np.float64)
    span = (stats.last_output_at or 0) - (stats.first_output_at or 0)
    shadow_scored = sum(
        agent.metrics.registry.get_sample_value(
            "streamer_predictions_total", {"variant": v.name, "shadow": "true"}
        )
        or 0.0
        for v in topology.shadows
    )
    return DemoSummary(
        events=events,
        served=stats.served,
        dead_letters=dict(stats.dead_letter_reasons),
        seconds=seconds,
        throughput=stats.served / span if span > 0 else 0.0,
        latency_ms={
            q: float(np.percentile(lat, p))
            for q, p in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))
        },
        variants=dict(variants),
        shadow_scored=int(shadow_scored),
    )


def format_summary(s: DemoSummary) -> str:
    """The summary block printed at the end of `streamer demo`."""
    dead = ", ".join(f"{k} {v}" for k, v in sorted(s.dead_letters.items())) or "none"
    split = ", ".join(
        f"{k} {v} ({v / max(s.served, 1):.0%})" for k, v in sorted(s.variants.items())
    )
    lat = s.latency_ms
    return "\n".join(
        [
            "summary",
            f"  events in        {s.events}",
            f"  predictions out  {s.served}  ({split})",
            f"  shadow scored    {s.shadow_scored}",
            f"  dead letters     {sum(s.dead_letters.values())}  ({dead})",
            f"  served rate      {s.throughput:,.0f} events/s (first to last output; "
            f"{s.seconds:.1f}s wall)",
            f"  latency (event -> prediction)  p50 {lat['p50']:.0f} ms  p95 {lat['p95']:.0f} ms  "
            f"p99 {lat['p99']:.0f} ms  max {lat['max']:.0f} ms",
        ]
    )
