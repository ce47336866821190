"""Throughput: the streamer engine against the best bare confluent-kafka loop.

    .venv/bin/python -m benchmarks.throughput [--events N] [--partitions P] [--repeats R]
        [--batch-size B] [--out benchmarks/results/throughput.json]

Starts its own broker (`streamer.kafka.local`, free port, throwaway data directory),
pre-loads N demo transactions (Avro, key = event id) into P partitions, then drains them R
times with each contender, alternating, each drain in its own group and topics:

* baseline, the best bare loop: the engine's clients (`make_consumer`, `make_producer`) and
  batching (`MicroBatcher`); each event produced unchanged (one record per event); up to
  max_in_flight_batches batches unacknowledged, committed in order once acknowledged.
* engine: `streamer.agent.Agent` in-process (`RunningAgent`), fraud_v2, Avro in, JSON
  output + JSON lake (two records per event), until it has served N; then stopped.

Throughput = N / (last - first output record CreateTime), read back afterwards (start-up
excluded); wall time runs from launch until all N are acknowledged. Every drain must leave
N distinct keys in its output and commit every input offset.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition
from confluent_kafka import libversion as librdkafka_version

from streamer.assembly import coordinates
from streamer.batching import MicroBatcher
from streamer.codecs import make_encoder
from streamer.commits import InFlight
from streamer.config import Topology
from streamer.demo.data import FEATURES, generate_transactions
from streamer.demo.train import ensure_models
from streamer.kafka.admin import ADMIN_TIMEOUT_S, create_topics
from streamer.kafka.clients import KafkaBatchSource, make_consumer, make_producer, retrying
from streamer.kafka.clients import produce as produce_one
from streamer.kafka.local import KAFKA_VERSION, LocalKafka, free_port_pair, start, stop
from streamer.testing import RunningAgent, committed_offsets, consume, produce, unique

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas" / "transaction.avsc"
MODELS_DIR = ROOT / "models"
MODEL_STEM = "fraud_v2"
DEFAULT_EVENTS = 200_000
DEFAULT_PARTITIONS = 6
DEFAULT_REPEATS = 3
DEFAULT_BATCH = 512
DEFAULT_OUT = Path("benchmarks/results/throughput.json")
MODES = ("baseline", "engine")
ENGINE_VARIANTS: dict[str, dict[str, Any]] = {
    "engine": {},
    "engine-eos": {"guarantee": "exactly_once"},
}
"""Engine contenders: topology keys over the engine's defaults. `engine-eos-MS` runs
exactly_once with `exactly_once.commit_interval_ms: MS` (the commit-interval sweep)."""


def engine_overrides(mode: str) -> dict[str, Any]:
    """The topology keys a contender changes (KeyError for an unknown one)."""
    if mode.startswith("engine-eos-"):
        interval = int(mode.removeprefix("engine-eos-"))
        return {"guarantee": "exactly_once", "exactly_once": {"commit_interval_ms": interval}}
    return ENGINE_VARIANTS[mode]


DRAIN_TIMEOUT_S = 600.0
"""Upper bound of one drain, start-up included; going past it means something is wrong."""


class BenchmarkError(RuntimeError):
    """A drain that failed, lost or duplicated events, or did not finish in time."""


@contextlib.contextmanager
def local_broker() -> Iterator[str]:
    """A broker of our own on a free port pair (broker, controller); deleted afterwards."""
    data_dir = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
    broker = LocalKafka(port=free_port_pair(), data_dir=data_dir)
    try:
        start(broker)
        yield broker.bootstrap
    finally:
        stop(broker)
        shutil.rmtree(data_dir, ignore_errors=True)


def engine_topology(
    name: str,
    bootstrap: str,
    input_topic: str,
    partitions: int,
    batch: int,
    overrides: dict[str, Any] | None = None,
) -> Topology:
    """The engine's topology for one drain; the baseline uses its clients, group and topics."""
    model = ensure_models(MODELS_DIR)[MODEL_STEM]
    return Topology.model_validate(
        {
            "name": name,
            "kafka": {"bootstrap_servers": bootstrap},
            "input": {"topic": input_topic, "format": "avro", "schema": str(SCHEMA)},
            "features": list(FEATURES),
            "batching": {"max_batch_size": batch},  # max_wait_ms, max_in_flight: defaults
            "variants": [{"name": MODEL_STEM, "model": str(model), "weight": 1.0}],
            "output": {"topic": f"{name}-out", "format": "json"},
            "lake": {"topic": f"{name}-lake", "format": "json"},
            "dead_letter": {"topic": f"{name}-dlq"},
            "metrics": {"port": None},
            "topics": {"partitions": partitions},
        }
        | (overrides or {})
    )


def preload(topology: Topology, n: int) -> float:
    """Create the topology's topics and put N Avro demo events in its input; seconds taken."""
    create_topics(topology)
    encoder = make_encoder("avro", SCHEMA)
    started = time.monotonic()
    items = ((str(e["id"]).encode(), encoder.encode(e)) for e in generate_transactions(n))
    produced = produce(topology.kafka.bootstrap_servers, topology.input.topic, items)
    if produced != n:
        raise BenchmarkError(f"pre-load produced {produced} of {n} events")
    return time.monotonic() - started


def drain_baseline(t: Topology, n: int, timeout_s: float) -> tuple[float, dict[str, Any]]:
    """The best bare loop (module docstring) until N events are copied and committed;
    (monotonic time all N were acknowledged, extras)."""
    deadline = time.monotonic() + timeout_s
    consumer = make_consumer(t.kafka, t.group_id)
    producer = make_producer(t.kafka, {})
    batcher = MicroBatcher(
        KafkaBatchSource(consumer), t.batching.max_batch_size, t.batching.max_wait_ms
    )
    in_flight = InFlight()
    served_to: dict[tuple[str, int], int] = {}

    def commit_acknowledged() -> None:
        producer.poll(0)
        if in_flight.failed():
            raise BenchmarkError(f"baseline: delivery failed: {in_flight.failed()[:3]}")
        fresh = in_flight.pop_committable()
        served_to.update(fresh)
        if fresh:
            offsets = [TopicPartition(tp, p, o) for (tp, p), o in fresh.items()]
            consumer.commit(offsets=offsets, asynchronous=True)
        if time.monotonic() > deadline:
            raise BenchmarkError(f"baseline copied {sum(served_to.values())} of {n} in time")

    consumer.subscribe([t.input.topic])
    consumed = batches = 0
    try:
        while consumed < n:
            while len(in_flight) >= t.batching.max_in_flight_batches:
                producer.poll(0.05)
                commit_acknowledged()
            messages = batcher.next_batch()
            if messages:
                batch = in_flight.open(coordinates(m) for m in messages)
                for m in messages:
                    produce_one(
                        producer, t.output.topic, m.value(), m.key(), on_delivery=batch.on_delivery
                    )
                    batch.sent()
                consumed += len(messages)
                batches += 1
            commit_acknowledged()
        if producer.flush(max(deadline - time.monotonic(), 1.0)):
            raise BenchmarkError("baseline: records unacknowledged at the deadline")
        acked_at = time.monotonic()
        commit_acknowledged()
        offsets = [TopicPartition(tp, p, o) for (tp, p), o in served_to.items()]
        retrying(lambda: consumer.commit(offsets=offsets, asynchronous=False), ADMIN_TIMEOUT_S)
    finally:
        consumer.close()
    return acked_at, {"batches": batches}


def drain_engine(t: Topology, n: int, timeout_s: float) -> tuple[float, dict[str, Any]]:
    """Run the agent until it served N events, then stop it (it drains and commits)."""
    with RunningAgent(t) as running:
        running.wait_until(n, timeout_s)
        acked_at = time.monotonic()
        stats = running.stop()
    if stats.served != n or stats.dead_letters:
        raise BenchmarkError(f"engine served {stats.served}, dead letters {stats.dead_letters}")
    return acked_at, {"batches": stats.batches, "largest_batch": stats.largest_batch}


def measure(mode: str, t: Topology, n: int, timeout_s: float) -> dict[str, Any]:
    """One drain: run it, then read back its output and its group's committed offsets."""
    launched, started = time.time(), time.monotonic()
    drain = drain_baseline if mode == "baseline" else drain_engine
    acked_at, extra = drain(t, n, timeout_s)
    bootstrap = t.kafka.bootstrap_servers
    records = consume(bootstrap, t.output.topic, n, timeout_s, idle_s=0.5)
    keys = {r.key for r in records}
    committed = committed_offsets(bootstrap, t.group_id, t.input.topic, t.topics.partitions)
    done = sum(max(o, 0) for o in committed.values())
    if len(keys) != n or done != n:
        raise BenchmarkError(
            f"{mode}: {t.output.topic} holds {len(records)} records, {len(keys)} distinct "
            f"keys; {done} input offsets committed; expected {n}"
        )
    stamps = sorted(r.timestamp_ms for r in records)
    span_s = max(stamps[-1] - stamps[0], 1) / 1000.0
    return {
        "mode": mode,
        "records": len(records),
        "events_per_s": round(n / span_s, 1),
        "span_s": round(span_s, 3),
        "wall_s": round(acked_at - started, 3),
        "startup_s": round(stamps[0] / 1000.0 - launched, 3),
        **extra,
    }


def machine_facts() -> dict[str, Any]:
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [line.split(":", 1)[1].strip() for line in cpu.splitlines() if "model name" in line]
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": models[0] if models else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{pkg: version(pkg) for pkg in ("confluent-kafka", "onnxruntime", "numpy", "fastavro")},
        "librdkafka": librdkafka_version()[0],
        "kafka_broker": KAFKA_VERSION,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["events_per_s"] for r in runs]
    return {
        "runs": len(runs),
        "median_events_per_s": round(statistics.median(rates), 1),
        "min_events_per_s": min(rates),
        "max_events_per_s": max(rates),
        "median_wall_s": round(statistics.median(r["wall_s"] for r in runs), 3),
        "median_startup_s": round(statistics.median(r["startup_s"] for r in runs), 3),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    def positive(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
        return int(text)

    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add = parser.add_argument
    add("--events", type=positive, default=DEFAULT_EVENTS, help="events (%(default)s)")
    add("--partitions", type=positive, default=DEFAULT_PARTITIONS, help="(%(default)s)")
    add("--repeats", type=positive, default=DEFAULT_REPEATS, help="runs each (%(default)s)")
    add("--batch-size", type=positive, default=DEFAULT_BATCH, help="(%(default)s)")
    add("--timeout", type=float, default=DRAIN_TIMEOUT_S, help="seconds per drain")
    add("--out", type=Path, default=DEFAULT_OUT, help="JSON result file (%(default)s)")
    add(
        "--modes",
        nargs="+",
        default=list(MODES),
        help="contenders: baseline, engine, engine-eos, engine-eos-MS (%(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    n, parts, batch = args.events, args.partitions, args.batch_size
    machine = machine_facts()
    runs: list[dict[str, Any]] = []
    with local_broker() as bootstrap:
        run_id = unique("bench")
        print(f"{bootstrap}: pre-loading {n:,} events into {run_id}-in", file=sys.stderr)
        first = engine_topology(run_id, bootstrap, f"{run_id}-in", parts, batch)
        preload_s = preload(first, n)
        for repeat, mode in itertools.product(range(1, args.repeats + 1), args.modes):
            overrides = {} if mode == "baseline" else engine_overrides(mode)
            topology = engine_topology(
                f"{run_id}-{mode}{repeat}", bootstrap, f"{run_id}-in", parts, batch, overrides
            )
            create_topics(topology)
            run = {"repeat": repeat, **measure(mode, topology, n, args.timeout)}
            runs.append(run)
            print(f"  {mode:8s} #{repeat}: {run['events_per_s']:>10,.0f} events/s", file=sys.stderr)
    summary: dict[str, Any] = {
        m: summarize([r for r in runs if r["mode"] == m]) for m in args.modes
    }
    medians = {m: summary[m]["median_events_per_s"] for m in args.modes}
    if "baseline" in medians:
        for m in args.modes:
            if m != "baseline":
                summary[f"ratio_{m}_over_baseline"] = round(medians[m] / medians["baseline"], 3)
    if "engine" in medians:
        for m in args.modes:
            if m.startswith("engine-"):
                summary[f"ratio_{m}_over_engine"] = round(medians[m] / medians["engine"], 3)
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    config = {
        "events": n,
        "partitions": parts,
        "batch_size": batch,
        "max_wait_ms": first.batching.max_wait_ms,
        "max_in_flight_batches": first.batching.max_in_flight_batches,
        "repeats": args.repeats,
        "throughput": "events / (last - first output record CreateTime)",
        "baseline": "make_consumer/make_producer, MicroBatcher, each event produced unchanged, "
        "up to max_in_flight_batches unacknowledged, in-order commits",
        "engine": f"Agent, {MODEL_STEM}, Avro in, JSON output + JSON lake (2 records/event)",
    }
    result = {
        "benchmark": "throughput",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config,
        "machine": machine,
        "preload_s": round(preload_s, 3),
        "runs": runs,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for m in args.modes:
        x = summary[m]
        print(
            f"{m}: median {x['median_events_per_s']:,.0f} events/s (range "
            f"{x['min_events_per_s']:,.0f} - {x['max_events_per_s']:,.0f}), median wall "
            f"{x['median_wall_s']:.1f}s"
        )
    for key, ratio in summary.items():
        if key.startswith("ratio_"):
            print(f"{key.removeprefix('ratio_').replace('_over_', ' / ')} = {ratio:.2f}")
    print(f"\nwritten {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
