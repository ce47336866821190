"""Controller throughput: can one controller process keep up with one engine process's lake?

    .venv/bin/python -m benchmarks.controller_throughput [--events N] [--repeats R]
        [--pending 1000000] [--out benchmarks/results/controller_throughput.json]

Starts its own broker, then on the same machine, R times one after the other (the medians
are compared: the machine is shared and its load moves):

1. the engine as `benchmarks.throughput` runs it (fraud_v2, Avro in, JSON output and JSON
   lake, in-process) drains N pre-loaded events; its lake rate is N / (last - first lake
   record CreateTime);
2. a reward for each of those lake records goes to a feedback topic (`{"id", "reward"}`,
   key = id, confluent-kafka's default partitioner, as many partitions as the lake: the
   co-partitioning the controller needs);
3. one controller (in-process `RunningController`, thompson, update_interval_s 1,
   reward_window_s 3600 so that everything pre-loaded is inside the window it replays)
   starts from scratch and reads both topics to the end; its rate is read off
   streamer_controller_records_total, from its first record until all 2N are read, and
   every reward must have joined its decision.

Last, the memory of a pending decision: tracemalloc over a `Ledger` holding 1M decisions
waiting for their rewards, with UUID4 ids and with the demo's `tx-000000012` ids.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from benchmarks.bandit import code_state
from benchmarks.throughput import (
    DEFAULT_BATCH,
    DEFAULT_EVENTS,
    DEFAULT_PARTITIONS,
    DRAIN_TIMEOUT_S,
    BenchmarkError,
    engine_topology,
    local_broker,
    machine_facts,
    measure,
    preload,
)
from streamer.bandit.ledger import Ledger, LedgerSettings
from streamer.config import Topology
from streamer.kafka.admin import create_topics
from streamer.testing import Record, RunningController, consume, produce, unique

DEFAULT_PENDING = 1_000_000
DEFAULT_REPEATS = 3
DEFAULT_OUT = Path("benchmarks/results/controller_throughput.json")
REWARD_WINDOW_S = 3600.0
POLL_S = 0.05


def controller_topology(engine: Topology) -> Topology:
    """The engine's topology with a second served variant and a bandit controller: the
    controller reads the lake the engine wrote."""
    raw = engine.model_dump(mode="json", by_alias=True)
    raw["variants"].append({**raw["variants"][0], "name": "other"})
    raw["routing"] = {"strategy": "bandit", "control_topic": f"{engine.name}-control"}
    raw["bandit"] = {
        "policy": "thompson",
        "feedback_topic": f"{engine.name}-feedback",
        "reward_window_s": REWARD_WINDOW_S,
        "update_interval_s": 1.0,
        "seed": 1,
        "metrics_port": None,
    }
    return Topology.model_validate(raw)


def engine_lake_rate(bootstrap: str, n: int) -> tuple[Topology, list[Record], dict[str, Any]]:
    name = unique("ctl")
    t = engine_topology(name, bootstrap, f"{name}-in", DEFAULT_PARTITIONS, DEFAULT_BATCH)
    preload(t, n)
    run = measure("engine", t, n, DRAIN_TIMEOUT_S)
    lake = consume(bootstrap, t.lake.topic, n, 120, idle_s=0.5)
    if len({r.key for r in lake}) != n:
        raise BenchmarkError(f"the lake holds {len(lake)} records, expected {n}")
    stamps = sorted(r.timestamp_ms for r in lake)
    span_s = max(stamps[-1] - stamps[0], 1) / 1000.0
    return t, lake, {**run, "lake_records": len(lake), "lake_records_per_s": round(n / span_s, 1)}


def controller_rate(t: Topology, n: int, timeout_s: float) -> dict[str, Any]:
    """Run one controller from scratch until it has read the N lake and N feedback records."""
    total = 2 * n
    launched = time.monotonic()
    with RunningController(t) as running:
        metrics = running.controller.metrics
        first: tuple[float, float] | None = None
        deadline = launched + timeout_s
        while (read := metrics.value("streamer_controller_records_total")) < total:
            now = time.monotonic()
            if running.error is not None or now > deadline:
                raise BenchmarkError(f"controller read {read:.0f} of {total} ({running.error!r})")
            if first is None and read > 0:
                first = (now, read)
            time.sleep(POLL_S)
        done = time.monotonic()
        stats = running.stop()
    assert first is not None
    joined = stats.rewards.get("joined", 0)
    if joined != n:
        raise BenchmarkError(f"{joined} of {n} rewards joined: {stats.rewards}")
    span_s = done - first[0]
    return {
        "records": stats.records,
        "rewards": stats.rewards,
        "records_per_s": round((total - first[1]) / span_s, 1),
        "lake_records_per_s": round((total - first[1]) / 2 / span_s, 1),
        "span_s": round(span_s, 3),
        "startup_s": round(first[0] - launched, 3),
        "control_records": stats.published,
    }


def bytes_per_pending(n: int, ids: Iterator[str]) -> float:
    """tracemalloc's growth per decision of a ledger filled with N pending decisions."""
    settings = LedgerSettings(
        variants=["a", "b"],
        window_s=REWARD_WINDOW_S,
        default_reward=None,
        reward="binary",
        max_pending=10 * n,
        decay=1.0,
        decay_interval_s=5.0,
    )
    gc.collect()
    tracemalloc.start()
    try:
        ledger = Ledger(settings)
        base = tracemalloc.get_traced_memory()[0]
        now = time.time()
        for i, event_id in zip(range(n), ids, strict=False):
            ledger.decision(event_id, "ab"[i % 2], 0.5, now + i / 2000, i)
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    if len(ledger.pending) != n:
        raise BenchmarkError(f"{len(ledger.pending)} of {n} decisions pending")
    return round(grown / n, 1)


def uuid4_ids(seed: int = 1) -> Iterator[str]:
    rng = random.Random(seed)
    while True:
        yield str(uuid.UUID(int=rng.getrandbits(128), version=4))


def demo_ids() -> Iterator[str]:
    i = 0
    while True:
        yield f"tx-{i:09d}"
        i += 1


def one_pair(bootstrap: str, n: int, timeout_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The engine's lake rate, then one controller over that lake and a reward per id."""
    engine_t, lake, engine = engine_lake_rate(bootstrap, n)
    engine["loadavg"] = load()
    t = controller_topology(engine_t)
    create_topics(t)
    assert t.bandit is not None
    rng = random.Random(2)
    rewards = (
        (r.key, orjson.dumps({"id": (r.key or b"").decode(), "reward": int(rng.random() < 0.06)}))
        for r in lake
    )
    produce(bootstrap, t.bandit.feedback_topic, rewards)
    del lake
    controller = controller_rate(t, n, timeout_s)
    return engine, {"loadavg": load(), **controller}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.controller_throughput", description=__doc__
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add = parser.add_argument
    add("--events", type=int, default=DEFAULT_EVENTS, help="lake records (%(default)s)")
    add("--pending", type=int, default=DEFAULT_PENDING, help="ledger decisions (%(default)s)")
    add("--repeats", type=int, default=DEFAULT_REPEATS, help="runs of each (%(default)s)")
    add("--timeout", type=float, default=DRAIN_TIMEOUT_S, help="seconds per phase")
    add("--out", type=Path, default=DEFAULT_OUT, help="JSON result file (%(default)s)")
    args = parser.parse_args(argv)
    n = args.events
    machine = machine_facts()
    code = code_state()
    engines, controllers = [], []
    with local_broker() as bootstrap:
        for repeat in range(1, args.repeats + 1):
            engine, controller = one_pair(bootstrap, n, args.timeout)
            engines.append({"repeat": repeat, **engine})
            print(f"  #{repeat} engine lake {engine['lake_records_per_s']:,.0f}/s", file=sys.stderr)
            controllers.append({"repeat": repeat, **controller})
            print(
                f"  #{repeat} controller {controller['lake_records_per_s']:,.0f} lake records/s",
                file=sys.stderr,
            )
    machine["loadavg_at_end"] = load()
    engine_rate = statistics.median(e["lake_records_per_s"] for e in engines)
    controller_rate_ = statistics.median(c["lake_records_per_s"] for c in controllers)
    controller_records = statistics.median(c["records_per_s"] for c in controllers)
    pending = {
        "decisions": args.pending,
        "uuid4_ids": bytes_per_pending(args.pending, uuid4_ids()),
        "demo_ids": bytes_per_pending(args.pending, demo_ids()),
    }
    ratio = round(controller_rate_ / engine_rate, 3)
    result = {
        "benchmark": "controller_throughput",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "events": n,
            "partitions": DEFAULT_PARTITIONS,
            "engine": "benchmarks.throughput's engine drain (fraud_v2, Avro in, JSON out + lake)",
            "engine_lake_rate": "N / (last - first lake record CreateTime)",
            "controller": "RunningController, thompson, update_interval_s 1, reward_window_s "
            f"{REWARD_WINDOW_S:.0f}, from scratch over the pre-loaded lake + one reward per id",
            "controller_rate": "records read (lake + feedback) / (all read - first read), "
            "lake records/s = half of it",
            "repeats": args.repeats,
            "ratio": "median controller lake records/s / median engine lake records/s",
        },
        "machine": machine,
        "code": code,
        "summary": {
            "engine_median_lake_records_per_s": engine_rate,
            "controller_median_records_per_s": controller_records,
            "controller_median_lake_records_per_s": controller_rate_,
        },
        "controller_over_engine_lake_rate": ratio,
        "sustains_engine_lake_rate": ratio >= 1.0,
        "bytes_per_pending_decision": pending,
        "engine_runs": engines,
        "controller_runs": controllers,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"median of {args.repeats}: engine lake {engine_rate:,.0f} records/s; controller "
        f"{controller_records:,.0f} records/s = {controller_rate_:,.0f} lake records/s with "
        f"their rewards; ratio {ratio:.2f}\n"
        f"bytes per pending decision: {pending['uuid4_ids']:.0f} (UUID4 ids), "
        f"{pending['demo_ids']:.0f} (tx-000000012 ids)"
    )
    print(f"written {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
