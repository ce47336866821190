"""`streamer demo`: the whole path on the local broker, with a live view and a summary.

Starts (or reuses) the local Kafka, trains the demo models and lays out the model
directories if missing, creates the topology's topics, streams synthetic transactions with 1%
garbage at a steady rate, serves them with an in-process agent and finally reads the output
topic back to report exact end-to-end latency and the variant split with model versions.

The agent follows the topology's control topic and watches its model directories, so the
live view shows what `streamer control ... promote challenger` or a new
`models/challenger/N/model.onnx` changes while the demo runs.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from streamer.agent import Agent
from streamer.codecs import make_decoder, make_encoder
from streamer.config import Topology, load_topology
from streamer.demo.data import generate_transactions
from streamer.demo.train import ensure_models
from streamer.errors import StreamerError
from streamer.kafka.admin import create_topics
from streamer.kafka.clients import make_consumer, make_producer, produce, retrying
from streamer.kafka.local import LocalKafka, answers, start
from streamer.repository import scan, version_key
from streamer.testing import RunningAgent
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
    """Served variant -> outputs read back."""
    versions: dict[str, dict[str, int]]
    """Served variant -> model version -> outputs read back (a version can change live)."""
    shadow_scored: int


@dataclass(frozen=True)
class VariantLive:
    """One served variant in a line of the live view."""

    name: str
    weight: float | None
    """Its share of the routing weights in force; None while it is disabled."""
    served: int
    """Outputs it served since the previous line."""
    version: str
    """The model version it serves."""


@dataclass(frozen=True)
class LiveLine:
    """What one line of the live view shows."""

    elapsed: float
    served: int
    dead_letters: int
    rate: float
    """Events served or dead-lettered per second since the previous line."""
    variants: list[VariantLive]


def run_demo(
    topology_path: Path, events: int, rate: float, echo: Callable[[str], None]
) -> DemoSummary:
    """Run the demo end to end; `echo` receives the live view and progress lines."""
    if not topology_path.exists():
        raise StreamerError(
            f"{topology_path}: not found; run the demo from the repository root or pass --topology"
        )
    topology = load_topology(topology_path)
    for directory, missing in missing_models(topology).items():
        echo(f"creating demo models in {directory} ({', '.join(missing)}) ...")
        ensure_models(directory)
    validation = validate(topology_path)
    if validation.problems:
        raise StreamerError(str(validation.problems[0]))

    bootstrap = topology.kafka.bootstrap_servers
    if _is_local(bootstrap) and not answers(bootstrap, 3.0):
        result = start(LocalKafka(port=int(bootstrap.rsplit(":", 1)[1])))
        echo(
            f"Kafka {'already running' if result.already_running else 'started'} at "
            f"{result.bootstrap}"
        )
    for t in create_topics(topology):
        echo(f"topic {t.topic}: {'created' if t.created else 'exists'} ({t.partitions} partitions)")

    start_offsets = _end_offsets(topology)
    errors: list[BaseException] = []
    producer = threading.Thread(
        target=_produce_events, args=(topology, events, rate, errors), daemon=True
    )
    with RunningAgent(topology, validation.models) as running:
        began = time.monotonic()
        producer.start()
        _live_view(running, events, began, echo, errors)
        running.stop()
    if errors:
        raise StreamerError(f"demo failed: {errors[0]}")
    return _summarise(topology, running.agent, events, start_offsets, time.monotonic() - began)


def missing_models(topology: Topology) -> dict[Path, list[str]]:
    """Directory -> the variants' models in it with nothing to serve (no file, or a model
    directory without versions), for `ensure_models` to create."""
    missing: dict[Path, list[str]] = defaultdict(list)
    for v in topology.variants:
        if not scan(v):
            missing[v.model.parent].append(v.model.name)
    return dict(sorted(missing.items()))


def _is_local(bootstrap: str) -> bool:
    host = bootstrap.rsplit(":", 1)[0]
    return host in ("localhost", "127.0.0.1") and "," not in bootstrap


def _produce_events(topology: Topology, n: int, rate: float, errors: list[BaseException]) -> None:
    """Stream `n` events at `rate` per second, GARBAGE_SHARE of them broken."""
    try:
        encoder = make_encoder(topology.input.format, topology.input.schema_)
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
                value = encoder.encode(event)
            ahead = sent / rate - (time.monotonic() - began)
            if ahead > 0.001:
                producer.poll(ahead)
            produce(producer, topology.input.topic, value, str(event["id"]).encode())
        if producer.flush(60):
            raise StreamerError("demo events were not all acknowledged within 60 s")
    except BaseException as exc:  # reported by the live view
        errors.append(exc)


def _live_view(
    running: RunningAgent,
    events: int,
    began: float,
    echo: Callable[[str], None],
    errors: list[BaseException],
) -> None:
    """A progress line a second until every event is served or something failed."""
    agent = running.agent
    stats = agent.stats
    last_done, last_t, last_counts = 0, began, _served_counts(agent)
    deadline = began + max(events / 500.0, 120.0)
    while time.monotonic() < deadline and not errors and running.error is None:
        time.sleep(1.0)
        stats = agent.stats  # a snapshot of the agent's metrics
        counts = _served_counts(agent)
        done = stats.served + stats.dead_letters
        now = time.monotonic()
        line = LiveLine(
            elapsed=now - began,
            served=stats.served,
            dead_letters=stats.dead_letters,
            rate=(done - last_done) / (now - last_t),
            variants=_live_variants(agent, last_counts, counts),
        )
        echo(format_live_line(line))
        last_done, last_t, last_counts = done, now, counts
        if done >= events:
            return
    if not errors and running.error is None:
        errors.append(
            TimeoutError(
                f"only {stats.served + stats.dead_letters} of {events} events were served in time"
            )
        )


def _served_counts(agent: Agent) -> dict[str, int]:
    """Served variant -> outputs it has served so far (from the agent's metrics)."""
    return {
        v.name: int(
            agent.metrics.value("streamer_predictions_total", variant=v.name, shadow="false")
        )
        for v in agent.topology.served
    }


def _live_variants(
    agent: Agent, before: Mapping[str, int], after: Mapping[str, int]
) -> list[VariantLive]:
    latest = agent.variants.latest  # what the next batch is served with
    versions = {name: model.version for name, model in latest.models.items()}
    return live_variants(latest.router.weights, versions, before, after)


def live_variants(
    weights: Mapping[str, float],
    versions: Mapping[str, str],
    before: Mapping[str, int],
    after: Mapping[str, int],
) -> list[VariantLive]:
    """Each variant of `after` (served variant -> outputs so far) with its weight (absent:
    disabled), model version and the outputs it served since the `before` counts."""
    return [
        VariantLive(
            name=name,
            weight=weights.get(name),
            served=count - before.get(name, 0),
            version=versions.get(name, "?"),
        )
        for name, count in after.items()
    ]


def format_live_line(line: LiveLine) -> str:
    """`t=  3.0s served 14,512 dl 145  5,010 ev/s | champion w0.90 89% v fraud_v1 | ...`:
    per served variant its weight (`off` while disabled), its share of the outputs since the
    previous line (`-` when there were none) and the model version it serves."""
    head = (
        f"t={line.elapsed:5.1f}s served {line.served:>6,} dl {line.dead_letters:>3,}"
        f" {line.rate:>6,.0f} ev/s"
    )
    total = sum(v.served for v in line.variants)
    parts = [head]
    for v in line.variants:
        weight = "off  " if v.weight is None else f"w{v.weight:.2f}"
        share = f"{v.served / total:>3.0%}" if total else "  -"
        parts.append(f"{v.name} {weight} {share} v {v.version}")
    return " | ".join(parts)


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
    return make_consumer(topology.kafka, "streamer-demo-reader")  # assign()ed, never commits


def _summarise(
    topology: Topology,
    agent: Agent,
    events: int,
    start: dict[int, int],
    seconds: float,
) -> DemoSummary:
    """Read back this run's outputs for exact latency and the served variant split."""
    stats = agent.stats
    decoder = make_decoder(topology.output.format, topology.output.schema_)
    consumer = _reader(topology)
    consumer.assign([TopicPartition(topology.output.topic, p, o) for p, o in start.items()])
    latencies: list[int] = []
    variants: Counter[str] = Counter()
    versions: defaultdict[str, Counter[str]] = defaultdict(Counter)
    deadline = time.monotonic() + 30
    while len(latencies) < stats.served and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 0.5):
            if msg.error():
                continue
            value = decoder.decode(msg.value())
            latencies.append(value["ts_predicted"] - value["ts_event"])
            variants[value["variant"]] += 1
            versions[value["variant"]][str(value["model_version"])] += 1
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
        versions={name: dict(counts) for name, counts in versions.items()},
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
            f"  model versions   {format_versions(s.versions)}",
            f"  shadow scored    {s.shadow_scored}",
            f"  dead letters     {sum(s.dead_letters.values())}  ({dead})",
            f"  served rate      {s.throughput:,.0f} events/s (first to last output; "
            f"{s.seconds:.1f}s wall)",
            f"  latency (event -> prediction)  p50 {lat['p50']:.0f} ms  p95 {lat['p95']:.0f} ms  "
            f"p99 {lat['p99']:.0f} ms  max {lat['max']:.0f} ms",
        ]
    )


def format_versions(versions: Mapping[str, Mapping[str, int]]) -> str:
    """`challenger 1, champion fraud_v1`; a variant that served several versions (one was
    added or pinned while the demo ran) lists each with its outputs: `challenger 1 (12) 2 (18)`."""
    return (
        ", ".join(f"{name} {_versions_of(counts)}" for name, counts in sorted(versions.items()))
        or "none"
    )


def _versions_of(counts: Mapping[str, int]) -> str:
    ordered = sorted(counts, key=version_key)
    if len(ordered) == 1:
        return ordered[0]
    return " ".join(f"{v} ({counts[v]})" for v in ordered)
