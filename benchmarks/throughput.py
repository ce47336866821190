"""Throughput: the streamer engine against a bare confluent-kafka consume/produce loop.

    .venv/bin/python -m benchmarks.throughput [--events N] [--partitions P] [--repeats R]
        [--bootstrap 127.0.0.1:9092] [--out benchmarks/results/throughput.json]

N demo transactions (Avro, key = event id) are pre-loaded into a fresh input topic with P
partitions. That topic is then drained R times by each contender, alternating, every drain
in a fresh consumer group into fresh output topics:

* baseline: one confluent-kafka consumer that `consume(num_messages=batch)`s and produces each
  message unchanged (same key and value) with an idempotent acks=all producer, flushing and
  then committing once per batch. It decodes nothing and scores nothing: it is what Python
  and librdkafka on this machine can move from one topic to another.
* engine: `streamer run` (a real subprocess) on a one-variant topology (fraud_v2, Avro in,
  JSON out, JSON lake), until all N outputs are in its output topic; then SIGTERM, and it
  must exit 0.

Throughput = N / (last - first output record timestamp), read back from the output topic
afterwards, so start-up (imports, model loading, group join) is excluded; the record
timestamps are CreateTime, set by each contender's producer at produce time. Wall time
including start-up is reported too. Everything talks to 127.0.0.1 only, every wait is
bounded, and the topics and groups it made are deleted at the end (unless --keep-topics).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import yaml
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka import libversion as ck_libversion
from confluent_kafka import version as ck_version
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # re-exported by .admin, but not for type checkers

from streamer.config import BOOTSTRAP_ENV, load_topology
from streamer.demo.data import FEATURES, generate_transactions
from streamer.demo.train import ensure_models
from streamer.kafka.admin import create_topics
from streamer.kafka.local import KAFKA_VERSION
from streamer.testing import produce

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas" / "transaction.avsc"
MODELS_DIR = Path("models")
MODEL_STEM = "fraud_v2"

DEFAULT_EVENTS = 200_000
DEFAULT_PARTITIONS = 6
DEFAULT_REPEATS = 3
DEFAULT_BATCH = 512
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_OUT = Path("benchmarks/results/throughput.json")
DEFAULT_TIMEOUT_S = 600.0
"""Upper bound of one drain (start-up included); exceeded means something is wrong."""

ENGINE_MAX_WAIT_MS = 5
"""The engine's micro-batch `max_wait_ms` (DESIGN.md's default)."""
ENGINE_STOP_TIMEOUT_S = 90.0
"""SIGTERM to exit: the agent drains for up to 60 s (agent.DRAIN_TIMEOUT_S) plus margin."""
ADMIN_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05
"""How often the engine's output topic is checked for completion (wall-time resolution)."""

BASELINE_PRODUCER: dict[str, str | int | bool] = {
    # The same producer settings the engine uses (streamer.kafka.clients.make_producer), so
    # the comparison is about the work per event, not about producer tuning.
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "compression.type": "lz4",
}
BASELINE_CONSUME_TIMEOUT_S = 1.0
TRANSIENT_ERRORS = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_TOPIC,
    }
)
"""Metadata errors of a topic created a moment ago; they clear within seconds."""


class BenchmarkError(RuntimeError):
    """A drain that failed or did not finish in time; the message says which and why."""


@dataclass
class OutputScan:
    """What a drain left in its output topic, read back after it finished."""

    records: int
    distinct_keys: int
    first_ts_ms: int
    last_ts_ms: int
    steady_events_per_s: float
    """Rate between the 10th and 90th percentile record timestamps (no ramp-up, no tail)."""
    sample_value: str | None


@dataclass
class Drain:
    """One drain of the input topic by one contender."""

    mode: str
    repeat: int
    output_topic: str
    events: int
    records: int
    distinct_keys: int
    span_s: float
    events_per_s: float
    steady_events_per_s: float
    """Between the 10th and 90th percentile output timestamps: ramp-up and tail excluded."""
    wall_s: float
    """Launch (consumer created / subprocess started) until all N outputs were produced."""
    startup_s: float
    """Launch until the first output record's timestamp."""
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- Kafka helpers


def check_bootstrap(value: str) -> str:
    """argparse type: host:port[,host:port...] with every host 127.0.0.1."""
    for server in value.split(","):
        host, _, port = server.strip().rpartition(":")
        if host != "127.0.0.1" or not port.isdigit():
            raise argparse.ArgumentTypeError(
                f"{server!r}: this benchmark only talks to 127.0.0.1:PORT"
            )
    return value


def create_topic(admin: AdminClient, name: str, partitions: int) -> None:
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1)],
        operation_timeout=ADMIN_TIMEOUT_S,
        request_timeout=ADMIN_TIMEOUT_S,
    )
    futures[name].result()


def delete_topics(admin: AdminClient, topics: Sequence[str], groups: Sequence[str]) -> None:
    """Best effort: remove what this run created from the shared broker."""
    existing = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
    doomed = [t for t in topics if t in existing]
    if doomed:
        for topic, future in admin.delete_topics(
            doomed, operation_timeout=ADMIN_TIMEOUT_S, request_timeout=ADMIN_TIMEOUT_S
        ).items():
            try:
                future.result()
            except KafkaException as exc:
                print(f"warning: could not delete topic {topic}: {exc}", file=sys.stderr)
    if groups:
        futures = admin.delete_consumer_groups(list(groups), request_timeout=ADMIN_TIMEOUT_S)
        for future in futures.values():
            with contextlib.suppress(KafkaException):  # a group that never committed
                future.result()


def partitions_of(admin: AdminClient, topic: str) -> list[int]:
    metadata = admin.list_topics(topic=topic, timeout=ADMIN_TIMEOUT_S)
    return sorted(metadata.topics[topic].partitions)


def end_offsets(consumer: Consumer, topic: str, partitions: Sequence[int]) -> dict[int, int]:
    """High watermark per partition (= record count for a fresh, non-transactional topic).

    Retries briefly while a just-created topic's leaders are still being elected.
    """
    highs: dict[int, int] = {}
    deadline = time.monotonic() + ADMIN_TIMEOUT_S
    for p in partitions:
        while True:
            try:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=ADMIN_TIMEOUT_S, cached=False
                )
                highs[p] = int(high)
                break
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                retriable = isinstance(err, KafkaError) and (
                    err.retriable() or err.code() in TRANSIENT_ERRORS
                )
                if not retriable or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    return highs


def reader(bootstrap: str) -> Consumer:
    """A consumer for assign()-based reads; it never commits."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }
    )


def scan_output(bootstrap: str, admin: AdminClient, topic: str, timeout_s: float) -> OutputScan:
    """Read a whole output topic: record count, distinct keys, first and last timestamp."""
    consumer = reader(bootstrap)
    try:
        highs = end_offsets(consumer, topic, partitions_of(admin, topic))
        pending = {p for p, high in highs.items() if high > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(pending)])
        records = 0
        keys: set[bytes | None] = set()
        stamps: list[int] = []
        sample: str | None = None
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise BenchmarkError(
                    f"reading {topic} back took over {timeout_s:.0f}s "
                    f"({records} of {sum(highs.values())} records)"
                )
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(err)
                records += 1
                keys.add(msg.key())
                ts = int(msg.timestamp()[1])
                stamps.append(ts)
                value, partition, offset = msg.value(), msg.partition(), msg.offset()
                if sample is None and value is not None:
                    sample = value.decode("utf-8", "backslashreplace")
                if partition is not None and offset is not None and offset + 1 >= highs[partition]:
                    pending.discard(partition)
    finally:
        consumer.close()
    if not stamps:
        raise BenchmarkError(f"{topic} is empty")
    stamps.sort()
    lo, hi = len(stamps) // 10, (len(stamps) * 9) // 10
    steady = (hi - lo) / max(stamps[hi] - stamps[lo], 1) * 1000.0
    return OutputScan(records, len(keys), stamps[0], stamps[-1], round(steady, 1), sample)


# --------------------------------------------------------------------------- input


def preload(bootstrap: str, admin: AdminClient, topic: str, n: int, partitions: int) -> float:
    """Create the input topic and fill it with N Avro-encoded demo events; seconds taken."""
    create_topic(admin, topic, partitions)
    schema = fastavro.parse_schema(json.loads(SCHEMA.read_text()))
    started = time.monotonic()
    events = generate_transactions(n)

    def items() -> Iterator[tuple[bytes, bytes]]:
        for event in events:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, schema, event)
            yield str(event["id"]).encode(), buf.getvalue()

    produced = produce(bootstrap, topic, items())
    if produced != n:
        raise BenchmarkError(f"pre-load produced {produced} of {n} events")
    return time.monotonic() - started


# --------------------------------------------------------------------------- contenders


def drain_baseline(
    bootstrap: str,
    input_topic: str,
    output_topic: str,
    group: str,
    n: int,
    batch: int,
    timeout_s: float,
) -> tuple[float, float, dict[str, Any]]:
    """consume(batch) -> produce each unchanged -> flush -> commit, until N are copied.

    Returns (wall seconds, launch epoch seconds, extras).
    """
    launched = time.time()
    started = time.monotonic()
    deadline = started + timeout_s
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    producer = Producer({"bootstrap.servers": bootstrap, **BASELINE_PRODUCER})
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    copied = batches = 0
    try:
        consumer.subscribe([input_topic])
        while copied < n:
            if time.monotonic() > deadline:
                raise BenchmarkError(
                    f"baseline copied {copied} of {n} events within {timeout_s:.0f}s"
                )
            # Never ask for more than is left: the final partial batch would otherwise sit
            # out the whole consume timeout and count as (1 s of) throughput loss.
            want = min(batch, n - copied)
            messages = consumer.consume(num_messages=want, timeout=BASELINE_CONSUME_TIMEOUT_S)
            if not messages:
                continue
            for msg in messages:
                err = msg.error()
                if err is not None:
                    raise KafkaException(err)
                while True:
                    try:
                        producer.produce(
                            output_topic, msg.value(), msg.key(), on_delivery=on_delivery
                        )
                        break
                    except BufferError:
                        producer.poll(0.05)
            remaining = producer.flush(max(deadline - time.monotonic(), 1.0))
            if remaining or failures:
                raise BenchmarkError(
                    f"baseline: {remaining} unacknowledged, failures: {failures[:3]}"
                )
            # Outputs are durable: committing now is at-least-once, like the engine.
            consumer.commit(asynchronous=True)
            copied += len(messages)
            batches += 1
        wall_s = time.monotonic() - started
        try:  # wait for the last commit; "no offset" means the async one already did it
            consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                raise
    finally:
        consumer.close()
    if copied != n:
        raise BenchmarkError(f"baseline copied {copied} events, expected {n}")
    return wall_s, launched, {"batches": batches}


def streamer_executable() -> str:
    candidate = Path(sys.executable).parent / "streamer"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("streamer")
    if found is None:
        raise BenchmarkError(
            f"the `streamer` console script is not installed next to {sys.executable} nor on PATH"
        )
    return found


def engine_topology(
    name: str, bootstrap: str, input_topic: str, model: Path, partitions: int, batch: int
) -> dict[str, Any]:
    return {
        "name": name,
        "kafka": {"bootstrap_servers": bootstrap},
        "input": {"topic": input_topic, "format": "avro", "schema": str(SCHEMA)},
        "features": list(FEATURES),
        "batching": {"max_batch_size": batch, "max_wait_ms": ENGINE_MAX_WAIT_MS},
        "variants": [{"name": MODEL_STEM, "model": str(model.resolve()), "weight": 1.0}],
        "output": {"topic": f"{name}-out", "format": "json"},
        "lake": {"topic": f"{name}-lake", "format": "json"},
        "dead_letter": {"topic": f"{name}-dlq"},
        "routing": {"strategy": "static"},
        "guarantee": "at_least_once",
        "metrics": {"port": None},  # no fixed port: other agents may run on this machine
        "topics": {"partitions": partitions},
    }


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(empty log)"


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    """End a subprocess this benchmark started (SIGTERM, then SIGKILL)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


def drain_engine(
    bootstrap: str,
    admin: AdminClient,
    name: str,
    input_topic: str,
    model: Path,
    n: int,
    partitions: int,
    batch: int,
    timeout_s: float,
    workdir: Path,
) -> tuple[float, float, dict[str, Any]]:
    """`streamer run` until N outputs exist, then SIGTERM; it must exit 0.

    Returns (wall seconds until all N outputs were acknowledged, launch epoch seconds,
    extras).
    """
    path = workdir / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            engine_topology(name, bootstrap, input_topic, model, partitions, batch), sort_keys=False
        )
    )
    topology = load_topology(path)
    create_topics(topology)
    out_parts = partitions_of(admin, topology.output.topic)
    log_path = workdir / f"{name}.log"
    env = {**os.environ, BOOTSTRAP_ENV: bootstrap}
    watcher = reader(bootstrap)
    try:
        with log_path.open("wb") as log:
            launched = time.time()
            started = time.monotonic()
            proc = subprocess.Popen(
                [streamer_executable(), "run", str(path), "--log-level", "info"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        try:
            deadline = started + timeout_s
            while True:
                code = proc.poll()
                if code is not None:
                    raise BenchmarkError(
                        f"`streamer run` exited early with code {code}; log {log_path}:\n"
                        f"{_log_tail(log_path)}"
                    )
                done = sum(end_offsets(watcher, topology.output.topic, out_parts).values())
                if done >= n:
                    wall_s = time.monotonic() - started
                    break
                if time.monotonic() > deadline:
                    raise BenchmarkError(
                        f"`streamer run` produced {done} of {n} outputs within "
                        f"{timeout_s:.0f}s; log {log_path}:\n{_log_tail(log_path)}"
                    )
                time.sleep(POLL_INTERVAL_S)
            stop_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=ENGINE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise BenchmarkError(
                    f"`streamer run` did not exit within {ENGINE_STOP_TIMEOUT_S:.0f}s of "
                    f"SIGTERM; log {log_path}:\n{_log_tail(log_path)}"
                ) from None
            shutdown_s = time.monotonic() - stop_at
            if code != 0:
                raise BenchmarkError(
                    f"`streamer run` exited with code {code} after SIGTERM (expected 0); "
                    f"log {log_path}:\n{_log_tail(log_path)}"
                )
        finally:
            _stop_process(proc)
        lake = sum(end_offsets(watcher, topology.lake.topic, out_parts).values())
        dlq_parts = partitions_of(admin, topology.dead_letter.topic)
        dead = sum(end_offsets(watcher, topology.dead_letter.topic, dlq_parts).values())
    finally:
        watcher.close()
    summary = _log_tail(log_path, 1)
    return (
        wall_s,
        launched,
        {
            "exit_code": code,
            "shutdown_s": round(shutdown_s, 3),
            "lake_records": lake,
            "dead_letters": dead,
            "agent_summary": summary if summary.startswith("stopped:") else None,
        },
    )


# --------------------------------------------------------------------------- reporting


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return str(getattr(mod, "__version__", None))


def _first(value: object) -> str:
    """confluent_kafka.version() is documented as (str, int) but 2.16 returns a str."""
    return str(value[0] if isinstance(value, tuple) else value)


def machine_facts() -> dict[str, Any]:
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_gib": mem_total_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "confluent_kafka": _first(ck_version()),
        "librdkafka": _first(ck_libversion()),
        "onnxruntime": _version("onnxruntime"),
        "numpy": _version("numpy"),
        "fastavro": _version("fastavro"),
        "kafka_broker_pinned": KAFKA_VERSION,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def summarize(drains: Sequence[Drain], mode: str) -> dict[str, Any]:
    runs = [d for d in drains if d.mode == mode]
    rates = [d.events_per_s for d in runs]
    return {
        "runs": len(runs),
        "median_events_per_s": round(statistics.median(rates), 1),
        "median_steady_events_per_s": round(
            statistics.median(d.steady_events_per_s for d in runs), 1
        ),
        "min_events_per_s": round(min(rates), 1),
        "max_events_per_s": round(max(rates), 1),
        "median_wall_s": round(statistics.median(d.wall_s for d in runs), 3),
        "median_startup_s": round(statistics.median(d.startup_s for d in runs), 3),
    }


def markdown(result: dict[str, Any]) -> str:
    cfg, summary = result["config"], result["summary"]
    rows = [
        ("baseline", "bare confluent-kafka consume → produce"),
        ("engine", f"`streamer run`, {MODEL_STEM}, Avro in, JSON out + JSON lake"),
    ]
    lines = [
        f"N = {cfg['events']:,} events, {cfg['partitions']} partitions, batch "
        f"{cfg['batch_size']}, {cfg['repeats']} repeat(s), nproc "
        f"{result['machine']['nproc']}",
        "",
        "| contender | what | median events/s | min - max events/s | median steady "
        "events/s (p10-p90) | median wall s (incl. start-up) | median start-up s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for mode, what in rows:
        s = summary[mode]
        lines.append(
            f"| {mode} | {what} | {s['median_events_per_s']:,.0f} | "
            f"{s['min_events_per_s']:,.0f} - {s['max_events_per_s']:,.0f} | "
            f"{s['median_steady_events_per_s']:,.0f} | "
            f"{s['median_wall_s']:.1f} | {s['median_startup_s']:.1f} |"
        )
    lines += [
        "",
        f"engine / baseline (median events/s) = **{summary['ratio_engine_over_baseline']:.2f}**",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description="Events/s of the streamer engine vs a bare confluent-kafka copy loop.",
    )
    parser.add_argument(
        "--events",
        type=int,
        default=DEFAULT_EVENTS,
        help="events pre-loaded and drained (default %(default)s)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=DEFAULT_PARTITIONS,
        help="partitions of every topic (default %(default)s)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=DEFAULT_REPEATS,
        help="drains per contender, alternating (default %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH,
        help="consume batch / engine max_batch_size (default %(default)s)",
    )
    parser.add_argument(
        "--bootstrap",
        type=check_bootstrap,
        default=DEFAULT_BOOTSTRAP,
        help="127.0.0.1:PORT of the broker (default %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="JSON result file (default %(default)s)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="upper bound in seconds of one drain (default %(default)s)",
    )
    parser.add_argument(
        "--keep-topics",
        action="store_true",
        help="leave the benchmark's topics and groups on the broker",
    )
    args = parser.parse_args(argv)
    for name in ("events", "partitions", "repeats", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    n, parts, batch = args.events, args.partitions, args.batch_size
    # The topology of each engine run must point at this broker, whatever the shell says.
    os.environ[BOOTSTRAP_ENV] = args.bootstrap
    machine = machine_facts()
    model = ensure_models(MODELS_DIR)[MODEL_STEM]
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    try:
        if not admin.list_topics(timeout=10).brokers:
            raise KafkaException("no brokers in metadata")
    except KafkaException as exc:
        print(f"error: no Kafka broker answers at {args.bootstrap}: {exc}", file=sys.stderr)
        return 1

    run_id = uuid.uuid4().hex[:8]
    input_topic = f"bench-{run_id}-in"
    topics = [input_topic]
    groups: list[str] = []
    drains: list[Drain] = []
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{run_id}-"))
    print(
        f"run {run_id}: pre-loading {n:,} events into {input_topic} ({parts} partitions)",
        file=sys.stderr,
    )
    try:
        preload_s = preload(args.bootstrap, admin, input_topic, n, parts)
        print(f"  pre-loaded in {preload_s:.1f}s", file=sys.stderr)
        for repeat in range(1, args.repeats + 1):
            for mode in ("baseline", "engine"):
                name = f"bench-{run_id}-{mode[0]}{repeat}"
                if mode == "baseline":
                    out_topic = f"{name}-out"
                    topics.append(out_topic)
                    groups.append(f"{name}.group")
                    create_topic(admin, out_topic, parts)
                    wall_s, launched, extra = drain_baseline(
                        args.bootstrap,
                        input_topic,
                        out_topic,
                        f"{name}.group",
                        n,
                        batch,
                        args.timeout,
                    )
                else:
                    out_topic = f"{name}-out"
                    topics += [out_topic, f"{name}-lake", f"{name}-dlq"]
                    groups.append(f"{name}.agent")
                    wall_s, launched, extra = drain_engine(
                        args.bootstrap,
                        admin,
                        name,
                        input_topic,
                        model,
                        n,
                        parts,
                        batch,
                        args.timeout,
                        workdir,
                    )
                scan = scan_output(args.bootstrap, admin, out_topic, args.timeout)
                if scan.records < n or scan.distinct_keys < n:
                    raise BenchmarkError(
                        f"{mode}: {out_topic} holds {scan.records} records with "
                        f"{scan.distinct_keys} distinct keys, expected {n}"
                    )
                span_s = max(scan.last_ts_ms - scan.first_ts_ms, 1) / 1000.0
                extra["sample_value"] = scan.sample_value if mode == "engine" else None
                drain = Drain(
                    mode=mode,
                    repeat=repeat,
                    output_topic=out_topic,
                    events=n,
                    records=scan.records,
                    distinct_keys=scan.distinct_keys,
                    span_s=round(span_s, 3),
                    events_per_s=round(n / span_s, 1),
                    steady_events_per_s=scan.steady_events_per_s,
                    wall_s=round(wall_s, 3),
                    startup_s=round(scan.first_ts_ms / 1000.0 - launched, 3),
                    extra=extra,
                )
                drains.append(drain)
                print(
                    f"  {mode:8s} #{repeat}: {drain.events_per_s:>10,.0f} events/s "
                    f"(span {drain.span_s:.2f}s, wall {drain.wall_s:.2f}s, "
                    f"start-up {drain.startup_s:.2f}s)",
                    file=sys.stderr,
                )
    except BaseException:
        print(f"topologies and engine logs kept in {workdir}", file=sys.stderr)
        raise
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    finally:
        if not args.keep_topics:
            with contextlib.suppress(KafkaException):
                delete_topics(admin, topics, groups)

    summary: dict[str, Any] = {m: summarize(drains, m) for m in ("baseline", "engine")}
    summary["ratio_engine_over_baseline"] = round(
        summary["engine"]["median_events_per_s"] / summary["baseline"]["median_events_per_s"],
        3,
    )
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result: dict[str, Any] = {
        "benchmark": "throughput",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "events": n,
            "partitions": parts,
            "batch_size": batch,
            "repeats": args.repeats,
            "bootstrap": args.bootstrap,
            "throughput": "events / (last - first output record CreateTime)",
            "baseline": {
                "consume": f"consume(num_messages=min({batch}, remaining), "
                f"timeout={BASELINE_CONSUME_TIMEOUT_S})",
                "producer": BASELINE_PRODUCER,
                "commit": "per batch, asynchronous, after flush() returned 0",
            },
            "engine": {
                "command": "streamer run TOPOLOGY",
                "model": f"{MODELS_DIR / model.name}",
                "input": "avro",
                "output": "json",
                "lake": "json",
                "max_batch_size": batch,
                "max_wait_ms": ENGINE_MAX_WAIT_MS,
                "guarantee": "at_least_once",
                "records_written_per_event": 2,
            },
        },
        "machine": machine,
        "preload_s": round(preload_s, 3),
        "runs": [asdict(d) for d in drains],
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
