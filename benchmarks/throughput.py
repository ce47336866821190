"""Throughput, latency under load, batching sweeps and a soak: streamer against the best
bare confluent-kafka loop, a Faust agent and a per-event loop, on one broker and machine.

    .venv/bin/python -m benchmarks.throughput [--contenders] [--latency] [--sweeps] [--soak]
        [--events N] [--repeats R] [--modes MODE ...] [--out-dir benchmarks/results]

With no part named it runs --contenders --latency --sweeps (`make bench`); --soak is
separate (`make bench-soak`, 10 minutes). Starts its own broker (`streamer.kafka.local`,
free port, throwaway data directory). Every contender runs in a process of its own
(`benchmarks.contenders`, `benchmarks.faust_app`), sampled every 100 ms by this one (psutil:
CPU user+sys of it and its children, RSS), so its CPU and memory are its own.

Contenders (--contenders): N demo transactions (Avro, key = event id) are pre-loaded into
one topic of P partitions; each contender drains it from the start in a fresh group into
its own topics, R times, alternating. Throughput = N / (last - first output CreateTime)
(steady state: start-up and shutdown excluded); CPU s per 1k events over that same window;
peak RSS of the process (VmHWM). One unmeasured limit drain comes first. Every drain must
leave N distinct keys in its output and commit every input offset.

* limit: the best bare loop: consume batches, `produce_batch` them unchanged, commit
  acknowledged batches (no decoding, no model: the ceiling of Python + librdkafka here).
* limit-job: the limit's loop doing the engine's job and nothing more: decode, one ONNX
  call per batch, a JSON output and a JSON lake record per event (the floor under the engine).
* engine: streamer at its defaults (fraud_v2, Avro in, JSON output + JSON lake); and with
  the lake off, a shadow variant (fraud_v3), or
  exactly_once (`engine-eos-MS`: with commit_interval_ms MS).
* faust: a faust-streaming agent, per-event decode + one-row ONNX + `topic.send`.
* per-event: poll one, decode, score one row, produce one.

Latency (--latency): an open-loop generator (`benchmarks.loadgen`) offers 25/50/80% of a
contender's measured maximum for --latency-s each; latency = output CreateTime - the
event's timestamp (when the generator was due to send it), the first 2 s excluded.

Sweeps (--sweeps): the engine at max_batch_size 1..1024 and at several max_wait_ms: its
drain throughput and its latency at one fixed offered rate.

Soak (--soak): the engine at 50% (--soak-load) of its maximum for --soak-s; RSS every 10 s.

Methods and findings: benchmarks/README.md.
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
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
from confluent_kafka import Consumer, KafkaException
from confluent_kafka import libversion as librdkafka_version

from benchmarks import report
from benchmarks.contenders import Spec
from streamer.codecs import make_encoder
from streamer.config import Topology
from streamer.demo.data import FEATURES, generate_transactions
from streamer.demo.train import ensure_models
from streamer.kafka.admin import create_topics
from streamer.kafka.local import KAFKA_VERSION, LocalKafka, free_port_pair, start, stop
from streamer.testing import RunningAgent, committed_offsets, produce, unique

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas" / "transaction.avsc"
MODELS_DIR = ROOT / "models"
MODEL_STEM = "fraud_v2"
SHADOW_STEM = "fraud_v3"
DEFAULT_EVENTS = 200_000
DEFAULT_PARTITIONS = 6
DEFAULT_REPEATS = 3
DEFAULT_BATCH = 512
DEFAULT_OUT_DIR = Path("benchmarks/results")
CONTENDERS = (
    "limit",
    "limit-job",
    "engine",
    "engine-nolake",
    "engine-shadow",
    "engine-eos",
    "faust",
    "per-event",
)
LATENCY_CONTENDERS = ("engine", "per-event")
LOADS = (0.25, 0.5, 0.8)
BATCH_SIZES = (1, 16, 64, 256, 512, 1024)
MAX_WAITS_MS = (0, 1, 5, 20, 100)
SAMPLE_S = 0.1
SMALL_BATCH = 16
SMALL_BATCH_SHARE = 5
"""Sweep points with max_batch_size below SMALL_BATCH drain 1/SMALL_BATCH_SHARE of the events."""
SOAK_SAMPLE_S = 10.0
DRAIN_TIMEOUT_S = 600.0
"""Upper bound of one drain, start-up included; going past it means something is wrong."""
READY_TIMEOUT_S = 90.0


class BenchmarkError(RuntimeError):
    """A drain that failed, lost or duplicated events, or did not finish in time."""


# -- broker -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    pid: int | None


@contextlib.contextmanager
def bench_broker() -> Iterator[Broker]:
    """A broker of our own on a free port pair (broker, controller); deleted afterwards."""
    data_dir = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
    broker = LocalKafka(port=free_port_pair(), data_dir=data_dir)
    try:
        started = start(broker)
        yield Broker(broker.bootstrap, started.pid)
    finally:
        stop(broker)
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def local_broker() -> Iterator[str]:
    """`bench_broker`, for callers that need only its address."""
    with bench_broker() as broker:
        yield broker.bootstrap


# -- topologies ---------------------------------------------------------------------------


def engine_overrides(mode: str, name: str = "x") -> dict[str, Any]:
    """The topology keys an engine contender changes (KeyError for an unknown one)."""
    if mode == "engine":
        return {}
    if mode == "engine-eos":
        return {"guarantee": "exactly_once"}
    if mode.startswith("engine-eos-"):
        interval = int(mode.removeprefix("engine-eos-"))
        return {"guarantee": "exactly_once", "exactly_once": {"commit_interval_ms": interval}}
    if mode == "engine-shadow":
        models = ensure_models(MODELS_DIR)
        return {
            "variants": [
                {"name": MODEL_STEM, "model": str(models[MODEL_STEM]), "weight": 1.0},
                {"name": SHADOW_STEM, "model": str(models[SHADOW_STEM]), "shadow": True},
            ]
        }
    if mode == "engine-nolake":
        return {"lake": {"topic": f"{name}-lake", "format": "json", "enabled": False}}
    raise KeyError(mode)


def engine_topology(
    name: str,
    bootstrap: str,
    input_topic: str,
    partitions: int,
    batch: int,
    overrides: dict[str, Any] | None = None,
    max_wait_ms: int | None = None,
) -> Topology:
    """The engine's topology for one drain; the other contenders use its group and topics."""
    model = ensure_models(MODELS_DIR)[MODEL_STEM]
    batching: dict[str, Any] = {"max_batch_size": batch}  # max_in_flight: the default
    if max_wait_ms is not None:
        batching["max_wait_ms"] = max_wait_ms
    return Topology.model_validate(
        {
            "name": name,
            "kafka": {"bootstrap_servers": bootstrap},
            "input": {"topic": input_topic, "format": "avro", "schema": str(SCHEMA)},
            "features": list(FEATURES),
            "batching": batching,
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


def contender_spec(mode: str, t: Topology, n: int, timeout_s: float) -> Spec:
    """How the contender `mode` serves topology `t` (its topics and group)."""
    kind = "engine" if mode.startswith("engine") else mode
    in_flight = t.batching.max_in_flight_batches
    batched = True
    if kind == "baseline" or (kind.startswith("limit") and kind != "limit-job"):
        # limit-loop: produce() per message; limit-inflight-K: K unacknowledged batches.
        batched = kind != "limit-loop"
        if kind.startswith("limit-inflight-"):
            in_flight = int(kind.removeprefix("limit-inflight-"))
        kind = "limit"
    return Spec(
        kind=kind,
        bootstrap=t.kafka.bootstrap_servers,
        input=t.input.topic,
        output=t.output.topic,
        group=t.group_id,
        events=n,
        timeout_s=timeout_s,
        batch_size=t.batching.max_batch_size,
        max_wait_ms=t.batching.max_wait_ms,
        max_in_flight=in_flight,
        model=str(t.variants[0].model),
        schema=str(SCHEMA),
        features=list(t.features),
        topology=t.model_dump(mode="json", by_alias=True) if kind == "engine" else None,
        produce_batch=batched,
        lake=t.lake.topic,
    )


# -- a contender in its own process, sampled ----------------------------------------------


@dataclass
class Sample:
    t: float
    """time.time()"""
    cpu_s: float
    """user+sys of the contender and its children"""
    rss: int
    broker_cpu_s: float
    busy_s: float
    """all CPUs: non-idle seconds (steal excluded)"""
    steal_s: float
    threads_run_s: float = 0.0
    """the contender's threads: seconds on a CPU (/proc/PID/task/*/schedstat)"""
    threads_wait_s: float = 0.0
    """the contender's threads: seconds runnable but waiting for a CPU"""


def _system_cpu() -> tuple[float, float]:
    c = psutil.cpu_times()
    idle = c.idle + getattr(c, "iowait", 0.0)
    steal = getattr(c, "steal", 0.0)
    total = sum(c)
    return total - idle - steal, steal


def _process_cpu(p: psutil.Process) -> float:
    c = p.cpu_times()
    return c.user + c.system + c.children_user + c.children_system


class ContenderProcess:
    """One contender process: started, its `ready` and `result` lines read, sampled."""

    def __init__(self, spec: Spec, broker_pid: int | None) -> None:
        self.spec = spec
        if spec.kind == "faust":
            argv = [sys.executable, "-m", "benchmarks.faust_app", "worker", "-l", "warn"]
            env = {**os.environ, "BENCH_SPEC": spec.to_json()}
        else:
            argv = [sys.executable, "-m", "benchmarks.contenders", spec.to_json()]
            env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in wait/kill
        self.launched = time.time()
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.ps = psutil.Process(self.proc.pid)
        self.broker = _maybe_process(broker_pid)
        self.samples: list[Sample] = []
        self.peak_rss = 0
        self.ready_at: float | None = None
        self.result: dict[str, Any] | None = None
        self._ready = threading.Event()
        self._done = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._reader.start()
        self._sampler.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            text = line.strip()
            if text.endswith("ready") and self.ready_at is None:
                self.ready_at = time.time()
                self._ready.set()
            elif "result {" in text:
                self.result = json.loads(text[text.index("result {") + 7 :])

    def _sample(self) -> None:
        while not self._done.is_set():
            with contextlib.suppress(psutil.Error):
                rss = self.ps.memory_info().rss + sum(
                    c.memory_info().rss for c in self.ps.children(recursive=True)
                )
                self.peak_rss = max(self.peak_rss, _high_water_mark(self.ps.pid), rss)
                busy, steal = _system_cpu()
                broker_cpu = _process_cpu(self.broker) if self.broker is not None else 0.0
                run_s, wait_s = _schedstat(self.ps.pid)
                self.samples.append(
                    Sample(
                        time.time(),
                        _process_cpu(self.ps),
                        rss,
                        broker_cpu,
                        busy,
                        steal,
                        run_s,
                        wait_s,
                    )
                )
            self._done.wait(SAMPLE_S)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise BenchmarkError(f"{self.spec.kind} never became ready: {self.error_text()}")

    def wait(self, timeout_s: float) -> dict[str, Any]:
        """Wait for the exit; the process's rusage (wait4) and its result line."""
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.kill()
                raise BenchmarkError(f"{self.spec.kind}: not done within {timeout_s:.0f}s")
            time.sleep(0.05)
        self.exited = time.time()
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self._done.set()
        self._sampler.join(5)
        self._reader.join(5)
        if self.proc.returncode != 0 or self.result is None:
            raise BenchmarkError(
                f"{self.spec.kind} exited {self.proc.returncode}: {self.error_text()}"
            )
        return {
            "cpu_s_total": round(usage.ru_utime + usage.ru_stime, 3),
            "peak_rss_mb": round(self.peak_rss / 2**20, 1),
            **self.result,
        }

    def kill(self) -> None:
        """Kill it unless it has exited (and been reaped: its pid may be someone else's)."""
        if self.proc.returncode is None:
            self.proc.kill()
            self.proc.wait()
        self._done.set()

    def error_text(self) -> str:
        self.stderr.seek(0)
        lines = self.stderr.read().decode(errors="replace").strip().splitlines()
        return " | ".join(lines[-5:]) or "(no output)"

    def window(self, first: float, last: float) -> dict[str, float]:
        """CPU of the contender, the broker and everything else between two times."""

        def at(t: float, attr: str) -> float:
            ts = [s.t for s in self.samples]
            return float(np.interp(t, ts, [getattr(s, attr) for s in self.samples]))

        span = max(last - first, 1e-3)
        cpu = at(last, "cpu_s") - at(first, "cpu_s")
        broker = at(last, "broker_cpu_s") - at(first, "broker_cpu_s")
        busy = at(last, "busy_s") - at(first, "busy_s")
        steal = at(last, "steal_s") - at(first, "steal_s")
        run = at(last, "threads_run_s") - at(first, "threads_run_s")
        wait = at(last, "threads_wait_s") - at(first, "threads_wait_s")
        return {
            "cpu_s": cpu,
            "cpu_cores": cpu / span,
            "broker_cores": broker / span,
            "others_cores": max(busy - cpu - broker, 0.0) / span,
            "steal_cores": steal / span,
            "threads_on_cpu": run / span,
            "threads_runq_wait": wait / span,
        }


def _schedstat(pid: int) -> tuple[float, float]:
    """Summed over the process's threads: (seconds on a CPU, seconds runnable but waiting
    for one). Threads that exited between samples drop out (short-lived ones are rare)."""
    run = wait = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                run_ns, wait_ns, _ = (task / "schedstat").read_text().split()
                run += int(run_ns)
                wait += int(wait_ns)
    return run / 1e9, wait / 1e9


def _high_water_mark(pid: int) -> int:
    """The process's peak RSS since its exec (VmHWM). Not wait4's ru_maxrss: Linux carries
    the forking parent's RSS over into that across the exec."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _maybe_process(pid: int | None) -> psutil.Process | None:
    if pid is None:
        return None
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


# -- reading outputs back ------------------------------------------------------------------


@dataclass
class Outputs:
    records: int = 0
    keys: set[bytes] = field(default_factory=set)
    first_ms: int = 0
    last_ms: int = 0
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    event_ms: array[float] = field(default_factory=lambda: array("d"))


def read_outputs(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout_s: float = 120.0,
    *,
    latency: bool = False,
    keep_keys: bool = True,
    idle_s: float = 0.5,
) -> Outputs:
    """Read `topic` from the start (read_committed) until `expected` records came and
    `idle_s` more passed; with `latency`, each JSON output's CreateTime - ts_event."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("bench-reader"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    out = Outputs(first_ms=2**62, last_ms=0)
    deadline = time.monotonic() + timeout_s
    settled: float | None = None
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(2000, 0.2):
                if msg.error():
                    raise KafkaException(msg.error())
                ts = msg.timestamp()[1]
                out.records += 1
                out.first_ms = min(out.first_ms, ts)
                out.last_ms = max(out.last_ms, ts)
                if keep_keys:
                    out.keys.add(msg.key() or b"")
                if latency:
                    event = orjson.loads(msg.value() or b"{}")["ts_event"]
                    out.latencies_ms.append(ts - event)
                    out.event_ms.append(event)
            if out.records >= expected:
                settled = settled or time.monotonic()
                if time.monotonic() - settled >= idle_s:
                    break
    finally:
        consumer.close()
    return out


# -- one drain ----------------------------------------------------------------------------


def measure(
    mode: str,
    t: Topology,
    n: int,
    timeout_s: float = DRAIN_TIMEOUT_S,
    broker_pid: int | None = None,
) -> dict[str, Any]:
    """One drain of N pre-loaded events by contender `mode` in its own process; read back
    its output and its group's committed offsets."""
    load1 = os.getloadavg()[0]
    process = ContenderProcess(contender_spec(mode, t, n, timeout_s), broker_pid)
    try:
        usage = process.wait(timeout_s)
    finally:
        process.kill()
        if mode == "faust":
            shutil.rmtree(Path(tempfile.gettempdir()) / f"bench-faust-{t.group_id}", True)
    bootstrap = t.kafka.bootstrap_servers
    out = read_outputs(bootstrap, t.output.topic, n, timeout_s)
    committed = committed_offsets(bootstrap, t.group_id, t.input.topic, t.topics.partitions)
    done = sum(max(o, 0) for o in committed.values())
    if len(out.keys) != n or done != n:
        raise BenchmarkError(
            f"{mode}: {t.output.topic} holds {out.records} records, {len(out.keys)} distinct "
            f"keys; {done} input offsets committed; expected {n}"
        )
    first, last = out.first_ms / 1000.0, out.last_ms / 1000.0
    span_s = max(last - first, 1e-3)
    w = process.window(first, last)
    served_in_window = n - 1  # the first output opens the window
    usage.pop("served", None)
    return {
        "mode": mode,
        "records": out.records,
        "events_per_s": round(n / span_s, 1),
        "span_s": round(span_s, 3),
        "startup_s": round(first - process.launched, 3),
        "wall_s": round(process.exited - process.launched, 3),
        "cpu_s_per_1k": round(w["cpu_s"] / served_in_window * 1000, 4),
        "cpu_s_per_1k_whole_process": round(usage.pop("cpu_s_total") / n * 1000, 4),
        "cpu_cores": round(w["cpu_cores"], 3),
        "broker_cores": round(w["broker_cores"], 3),
        "others_cores": round(w["others_cores"], 3),
        "steal_cores": round(w["steal_cores"], 3),
        "runq_wait_cores": round(w["threads_runq_wait"], 3),
        "loadavg_1m": round(load1, 2),
        **usage,
    }


def drain_engine(t: Topology, n: int, timeout_s: float) -> tuple[float, dict[str, Any]]:
    """In this process: run the agent until it served N events, then stop it (it drains and
    commits); (monotonic time it had served them, extras). For benchmarks that need the
    engine warm in-process (`benchmarks.bandit`); `measure` runs it in a process of its own."""
    with RunningAgent(t) as running:
        running.wait_until(n, timeout_s)
        acked_at = time.monotonic()
        stats = running.stop()
    if stats.served != n or stats.dead_letters:
        raise BenchmarkError(f"engine served {stats.served}, dead letters {stats.dead_letters}")
    return acked_at, {"batches": stats.batches, "largest_batch": stats.largest_batch}


def machine_facts() -> dict[str, Any]:
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [line.split(":", 1)[1].strip() for line in cpu.splitlines() if "model name" in line]
    flags = next((line for line in cpu.splitlines() if line.startswith("flags")), "")
    packages = (
        "confluent-kafka",
        "onnxruntime",
        "numpy",
        "fastavro",
        "orjson",
        "faust-streaming",
        "aiokafka",
    )

    def installed(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": models[0] if models else None,
        "hypervisor": "hypervisor" in flags.split(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{pkg: installed(pkg) for pkg in packages},
        "librdkafka": librdkafka_version()[0],
        "kafka_broker": KAFKA_VERSION,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def code_state() -> dict[str, Any]:
    """The commit measured, and the files of streamer/ that differed from it at the start
    (the engine is worked on while benchmarks run)."""

    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return run.stdout.strip()

    changed = git("status", "--porcelain", "--", "streamer").splitlines()
    return {"git_head": git("rev-parse", "HEAD"), "streamer_uncommitted": changed}


def spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["events_per_s"] for r in runs]
    median = statistics.median(rates)
    return {
        "runs": len(runs),
        "median_events_per_s": round(median, 1),
        "min_events_per_s": min(rates),
        "max_events_per_s": max(rates),
        "range_pct": round((max(rates) - min(rates)) / median * 100, 1),
        "cpu_s_per_1k": spread([r["cpu_s_per_1k"] for r in runs]),
        "cpu_cores": spread([r["cpu_cores"] for r in runs]),
        "peak_rss_mb": spread([r["peak_rss_mb"] for r in runs]),
        "median_startup_s": round(statistics.median(r["startup_s"] for r in runs), 3),
        "median_wall_s": round(statistics.median(r["wall_s"] for r in runs), 3),
    }


# -- parts --------------------------------------------------------------------------------


def run_contenders(
    broker: Broker,
    modes: Sequence[str],
    n: int,
    repeats: int,
    partitions: int = DEFAULT_PARTITIONS,
    batch: int = DEFAULT_BATCH,
    timeout_s: float = DRAIN_TIMEOUT_S,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> dict[str, Any]:
    """Pre-load N events once, then drain them `repeats` times with every mode, alternating."""
    for mode in modes:
        if mode.startswith("engine"):
            try:
                engine_overrides(mode)
            except (KeyError, ValueError):
                raise BenchmarkError(f"unknown contender {mode!r}") from None
    run_id = unique("bench")
    log(f"{broker.bootstrap}: pre-loading {n:,} events into {run_id}-in")
    first = engine_topology(run_id, broker.bootstrap, f"{run_id}-in", partitions, batch)
    preload_s = preload(first, n)
    # The first drain after the pre-load is slower for any contender (the fresh broker
    # serves its first fetches of the new segments slowly): one unmeasured limit drain.
    warm = engine_topology(f"{run_id}-warmup", broker.bootstrap, f"{run_id}-in", partitions, batch)
    create_topics(warm)
    warmup = measure("limit", warm, n, timeout_s, broker.pid)
    log(f"  warm-up drain (not counted): {warmup['events_per_s']:,.0f} events/s")
    runs: list[dict[str, Any]] = []
    for repeat, mode in itertools.product(range(1, repeats + 1), modes):
        name = f"{run_id}-{mode}{repeat}"
        overrides = engine_overrides(mode, name) if mode.startswith("engine") else {}
        topology = engine_topology(
            name, broker.bootstrap, f"{run_id}-in", partitions, batch, overrides
        )
        create_topics(topology)
        run = {"repeat": repeat, **measure(mode, topology, n, timeout_s, broker.pid)}
        runs.append(run)
        log(
            f"  {mode:14s} #{repeat}: {run['events_per_s']:>10,.0f} events/s, "
            f"{run['cpu_s_per_1k']:.3f} CPU s/1k, {run['cpu_cores']:.2f} cores, "
            f"{run['peak_rss_mb']:.0f} MB, load {run['loadavg_1m']:.1f}"
        )
    summary: dict[str, Any] = {m: summarize([r for r in runs if r["mode"] == m]) for m in modes}
    medians = {m: summary[m]["median_events_per_s"] for m in modes}
    for m in modes:
        for ref in ("limit", "faust", "engine"):
            if ref in medians and m != ref:
                summary[m][f"x_{ref}"] = round(medians[m] / medians[ref], 3)
    return {
        "config": {
            "events": n,
            "partitions": partitions,
            "batch_size": batch,
            "max_wait_ms": first.batching.max_wait_ms,
            "max_in_flight_batches": first.batching.max_in_flight_batches,
            "repeats": repeats,
            "order": "alternating: every mode once per round, rounds repeated; one "
            "unmeasured limit drain first (the first drain after the pre-load is slow)",
            "throughput": "events / (last - first output record CreateTime)",
            "cpu_s_per_1k": "contender user+sys (with children) between first and last "
            "output, interpolated from 100 ms psutil samples, per 1,000 events",
            "peak_rss_mb": "the contender's VmHWM (peak RSS since exec), sampled every 100 ms "
            "until it exits (plus its children's RSS, if any)",
        },
        "preload_s": round(preload_s, 3),
        "warmup_drain": warmup,
        "runs": runs,
        "summary": summary,
    }


def percentiles(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {}
    p50, p99, p999 = np.percentile(a, [50, 99, 99.9])
    return {
        "p50_ms": round(float(p50), 1),
        "p99_ms": round(float(p99), 1),
        "p99_9_ms": round(float(p999), 1),
        "max_ms": round(float(a.max()), 1),
        "mean_ms": round(float(a.mean()), 1),
    }


def latency_run(
    broker: Broker,
    mode: str,
    rate: float,
    seconds: float,
    *,
    partitions: int = DEFAULT_PARTITIONS,
    batch: int = DEFAULT_BATCH,
    max_wait_ms: int | None = None,
    warmup_s: float = 2.0,
    rss_every_s: float | None = None,
    keep_keys: bool = True,
) -> dict[str, Any]:
    """`mode` serving an open-loop load of `rate` events/s for `seconds`; latencies of
    the outputs of events due after the warm-up."""
    name = unique(f"lat-{mode}")
    overrides = engine_overrides(mode, name) if mode.startswith("engine") else {}
    t = engine_topology(
        name, broker.bootstrap, f"{name}-in", partitions, batch, overrides, max_wait_ms
    )
    create_topics(t)
    events = max(int(rate * seconds), 1)
    timeout_s = seconds * 3 + 120
    process = ContenderProcess(contender_spec(mode, t, events, timeout_s), broker.pid)
    try:
        process.wait_ready()
        load1 = os.getloadavg()[0]
        gen = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.loadgen",
                json.dumps(
                    {
                        "bootstrap": broker.bootstrap,
                        "topic": t.input.topic,
                        "rate": rate,
                        "events": events,
                    }
                ),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=timeout_s,
            check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        if gen.returncode != 0:
            raise BenchmarkError(f"load generator failed: {gen.stderr.strip()[-500:]}")
        generated = json.loads(gen.stdout.split("result ", 1)[1])
        usage = process.wait(timeout_s)
    finally:
        process.kill()
    out = read_outputs(
        broker.bootstrap, t.output.topic, events, timeout_s, latency=True, keep_keys=keep_keys
    )
    if out.records < events or (keep_keys and len(out.keys) != events):
        raise BenchmarkError(
            f"{mode} at {rate:.0f}/s: {out.records} outputs, {len(out.keys)} keys of {events}"
        )
    cutoff_ms = (generated["start"] + warmup_s) * 1000
    lat = np.asarray(out.latencies_ms)
    steady = lat[np.asarray(out.event_ms) >= cutoff_ms]
    w = process.window(generated["start"] + warmup_s, out.last_ms / 1000.0)
    result: dict[str, Any] = {
        "mode": mode,
        "offered_per_s": round(rate, 1),
        "seconds": seconds,
        "events": events,
        "achieved_rate": generated["achieved_rate"],
        "generator_behind_max_ms": generated["behind_max_ms"],
        "generator_cores": round(generated["cpu_s"] / max(generated["seconds"], 1e-3), 3),
        "measured_events": int(steady.size),
        **percentiles(steady),
        "cpu_cores": round(w["cpu_cores"], 3),
        "cpu_s_per_1k": round(w["cpu_s"] / max(steady.size, 1) * 1000, 4),
        "peak_rss_mb": usage["peak_rss_mb"],
        "loadavg_1m": round(load1, 2),
        "others_cores": round(w["others_cores"], 3),
        **{k: v for k, v in usage.items() if k in ("batches", "mean_batch", "largest_batch")},
    }
    if rss_every_s is not None:
        load = (generated["start"], generated["start"] + generated["seconds"])
        result["rss_samples"] = rss_samples(process.samples, load, rss_every_s)
        minute = 60_000.0
        t0 = generated["start"] * 1000
        ev = np.asarray(out.event_ms)
        result["p99_by_minute_ms"] = [
            round(
                float(
                    np.percentile(lat[(ev >= t0 + m * minute) & (ev < t0 + (m + 1) * minute)], 99)
                ),
                1,
            )
            for m in range(int(seconds // 60))
            if ((ev >= t0 + m * minute) & (ev < t0 + (m + 1) * minute)).any()
        ]
    return result


def run_latency(
    broker: Broker,
    maxima: dict[str, float],
    seconds: float,
    loads: Sequence[float] = LOADS,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> dict[str, Any]:
    """Each contender of `maxima` at each share of its maximum, alternating contenders."""
    runs = []
    for load, mode in itertools.product(loads, maxima):
        rate = maxima[mode] * load
        run = {"load": load, **latency_run(broker, mode, rate, seconds)}
        runs.append(run)
        log(
            f"  {mode:10s} {load:.0%} ({rate:,.0f}/s): p50 {run['p50_ms']:.1f} ms, "
            f"p99 {run['p99_ms']:.1f} ms, p99.9 {run['p99_9_ms']:.1f} ms"
        )
    return {
        "config": {
            "seconds_per_load": seconds,
            "loads": list(loads),
            "max_events_per_s": maxima,
            "latency": "output record CreateTime - ts_event (the event's CreateTime = when "
            "the open-loop generator was due to send it); first 2 s excluded",
        },
        "runs": runs,
    }


def run_sweeps(
    broker: Broker,
    n: int,
    rate: float,
    seconds: float,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    waits_ms: Sequence[int] = MAX_WAITS_MS,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> dict[str, Any]:
    """The engine per setting: drain throughput (N events) and latency at `rate`."""
    points = [("max_batch_size", b) for b in batch_sizes] + [("max_wait_ms", w) for w in waits_ms]
    run_id = unique("sweep")
    small = max(n // SMALL_BATCH_SHARE, 1)
    for suffix, count in (("in", n), ("in-small", small)):
        t = engine_topology(run_id, broker.bootstrap, f"{run_id}-{suffix}", DEFAULT_PARTITIONS, 512)
        preload(t, count)
    results = []
    for knob, value in points:
        batch = value if knob == "max_batch_size" else DEFAULT_BATCH
        wait = value if knob == "max_wait_ms" else None
        name = f"{run_id}-{knob[4:8]}{value}"
        # Tiny batches are slow (hundreds of events/s): they drain a smaller topic.
        events, suffix = (small, "in-small") if batch < SMALL_BATCH else (n, "in")
        t = engine_topology(
            name,
            broker.bootstrap,
            f"{run_id}-{suffix}",
            DEFAULT_PARTITIONS,
            batch,
            max_wait_ms=wait,
        )
        create_topics(t)
        drain = measure("engine", t, events, DRAIN_TIMEOUT_S, broker.pid)
        point: dict[str, Any] = {
            "knob": knob,
            "value": value,
            "drain_events": events,
            "events_per_s": drain["events_per_s"],
            "cpu_s_per_1k": drain["cpu_s_per_1k"],
            "drain_mean_batch": drain.get("mean_batch"),
        }
        if rate < drain["events_per_s"] * 0.9:
            lat = latency_run(broker, "engine", rate, seconds, batch=batch, max_wait_ms=wait)
            point |= {
                "latency": {k: lat[k] for k in ("p50_ms", "p99_ms", "p99_9_ms", "max_ms")},
                "load_mean_batch": lat.get("mean_batch"),
                "load_cpu_cores": lat["cpu_cores"],
            }
        else:
            point["latency"] = None
            point["saturated"] = f"{rate:,.0f}/s offered is above 90% of its drain rate"
        results.append(point)
        lat_text = (
            f"p50 {point['latency']['p50_ms']:.1f} ms p99 {point['latency']['p99_ms']:.1f} ms"
            if point["latency"]
            else "saturated"
        )
        log(f"  {knob} {value:>5}: {point['events_per_s']:>9,.0f} events/s, {lat_text}")
    return {
        "config": {
            "events": n,
            "offered_per_s": round(rate, 1),
            "seconds": seconds,
            "defaults": {"max_batch_size": DEFAULT_BATCH, "max_wait_ms": t.batching.max_wait_ms},
        },
        "points": results,
    }


def run_soak(broker: Broker, rate: float, seconds: float) -> dict[str, Any]:
    """The engine at `rate` for `seconds`; RSS every SOAK_SAMPLE_S and its summary."""
    run = latency_run(broker, "engine", rate, seconds, rss_every_s=SOAK_SAMPLE_S, keep_keys=False)
    # A short soak (the smoke test's minute) still gets minutes to compare after a warm-up.
    run["rss_mb"] = rss_summary(run["rss_samples"], warmup_s=min(60.0, seconds / 4))
    return run


def rss_samples(
    samples: Sequence[Sample], load: tuple[float, float], every_s: float
) -> list[dict[str, float]]:
    """RSS every `every_s` while the load ran, `t_s` from its start; the first sample is the
    ready agent's, taken just before the load (the ones before it are the start-up's, from a
    process that was still importing)."""
    before = [s for s in samples if s.t < load[0]]
    during = [s for s in samples if load[0] <= s.t <= load[1]]
    picked: list[dict[str, float]] = []
    for s in before[-1:] + during:
        t_s = round(s.t - load[0], 1)
        if not picked or t_s >= picked[-1]["t_s"] + every_s:
            picked.append({"t_s": t_s, "rss_mb": round(s.rss / 2**20, 1)})
    return picked


def rss_summary(
    samples: Sequence[dict[str, float]], warmup_s: float = 60.0, flat_within: float = 0.10
) -> dict[str, Any]:
    """RSS of the ready agent, the median of the first minute after `warmup_s` of load and of
    the last minute (single samples jitter by ~10 MB), the growth between those two medians,
    and whether it stayed within `flat_within` of the first (the soak's target)."""
    if not samples:
        return {}
    settled = [s["rss_mb"] for s in samples if s["t_s"] >= warmup_s]
    if not settled:
        return {}
    per_minute = max(int(60 / SOAK_SAMPLE_S), 1)
    first = statistics.median(settled[:per_minute])
    last = statistics.median(settled[-per_minute:])
    return {
        "ready": samples[0]["rss_mb"] if samples[0]["t_s"] <= 0 else None,
        "warmup_s": warmup_s,
        "after_warmup_median": round(first, 1),
        "last_minute_median": round(last, 1),
        "max": max(s["rss_mb"] for s in samples),
        "growth_after_warmup_mb": round(last - first, 1),
        "growth_after_warmup_pct": round((last - first) / first * 100, 1),
        "flat": abs(last - first) <= flat_within * first,
    }


# -- output -------------------------------------------------------------------------------


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    def positive(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
        return int(text)

    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add = parser.add_argument
    add("--contenders", action="store_true", help="throughput of every contender")
    add("--latency", action="store_true", help="latency at 25/50/80%% of the maximum")
    add("--sweeps", action="store_true", help="max_batch_size and max_wait_ms sweeps")
    add("--soak", action="store_true", help="the engine at 50%% load for --soak-s")
    add("--events", type=positive, default=DEFAULT_EVENTS, help="events (%(default)s)")
    add("--partitions", type=positive, default=DEFAULT_PARTITIONS, help="(%(default)s)")
    add("--repeats", type=positive, default=DEFAULT_REPEATS, help="runs each (%(default)s)")
    add("--batch-size", type=positive, default=DEFAULT_BATCH, help="(%(default)s)")
    add("--timeout", type=float, default=DRAIN_TIMEOUT_S, help="seconds per drain")
    add(
        "--modes",
        nargs="+",
        default=list(CONTENDERS),
        help="contenders: limit, limit-job, engine, engine-nolake, engine-shadow, engine-eos, "
        "engine-eos-MS, faust, per-event; limit-loop and limit-inflight-K are variants of the "
        "limit (%(default)s)",
    )
    add("--latency-s", type=float, default=30.0, help="seconds per load (%(default)s)")
    add("--sweep-events", type=positive, default=50_000, help="(%(default)s)")
    add(
        "--sweep-rate",
        type=float,
        default=None,
        help="offered events/s in the sweeps (default: 25%% of the engine's maximum)",
    )
    add("--sweep-s", type=float, default=15.0, help="seconds per sweep point (%(default)s)")
    add("--soak-s", type=float, default=600.0, help="(%(default)s)")
    add(
        "--soak-load",
        type=float,
        default=0.5,
        help="share of the engine's maximum offered in the soak (%(default)s); other than "
        "0.5 it writes soak-PCT.json",
    )
    add(
        "--max-rate",
        nargs=2,
        action="append",
        metavar=("MODE", "EVENTS_PER_S"),
        default=[],
        help="a contender's maximum for --latency/--sweeps/--soak without --contenders "
        "(default: from OUT_DIR/throughput.json)",
    )
    add("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="(%(default)s)")
    args = parser.parse_args(argv)
    if not (args.contenders or args.latency or args.sweeps or args.soak):
        args.contenders = args.latency = args.sweeps = True
    return args


def known_maxima(args: argparse.Namespace, contenders: dict[str, Any] | None) -> dict[str, float]:
    maxima: dict[str, float] = {}
    source = contenders
    if source is None and (args.out_dir / "throughput.json").exists():
        source = json.loads((args.out_dir / "throughput.json").read_text())
    if source is not None:
        for mode, s in source.get("summary", {}).items():
            if isinstance(s, dict) and "median_events_per_s" in s:
                maxima[mode] = s["median_events_per_s"]
    for mode, rate in args.max_rate:
        maxima[mode] = float(rate)
    return maxima


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    machine = machine_facts()
    out = args.out_dir
    stamp = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "code": code_state(),
    }
    contenders: dict[str, Any] | None = None

    def finish(part: str, data: dict[str, Any]) -> dict[str, Any]:
        data = {"benchmark": part, **stamp, **data}
        data["machine"] = {**machine, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}
        write_json(out / f"{part}.json", data)
        print(f"written {out / f'{part}.json'}", file=sys.stderr)
        return data

    with bench_broker() as broker:
        if args.contenders:
            result = run_contenders(
                broker,
                args.modes,
                args.events,
                args.repeats,
                args.partitions,
                args.batch_size,
                args.timeout,
            )
            contenders = finish("throughput", result)
            table = report.throughput_table(contenders)
            (out / "throughput.md").write_text(table + "\n")
            print(table)
        maxima = known_maxima(args, contenders)
        if args.latency:
            wanted = {m: maxima[m] for m in LATENCY_CONTENDERS if m in maxima}
            latency = finish("latency", run_latency(broker, wanted, args.latency_s))
            print(report.latency_table(latency))
        if args.sweeps:
            rate = args.sweep_rate or maxima.get("engine", 20_000.0) * 0.25
            sweeps = finish("sweeps", run_sweeps(broker, args.sweep_events, rate, args.sweep_s))
            print(report.sweeps_table(sweeps))
        if args.soak:
            rate = maxima.get("engine", 20_000.0) * args.soak_load
            part = "soak" if args.soak_load == 0.5 else f"soak-{args.soak_load * 100:.0f}"
            soak = finish(part, {"load": args.soak_load, **run_soak(broker, rate, args.soak_s)})
            text = report.soak_text(soak)
            (out / f"{part}.md").write_text(text + "\n")
            print(text)
    report.write_all(out)
    print(f"\ntook {time.monotonic() - began:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
