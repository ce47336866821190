"""What drift measurement costs the engine.

    .venv/bin/python -m benchmarks.drift_cost [--batches N] [--batch-size B] [--e2e EVENTS]
        [--repeats R] [--out benchmarks/results/drift_cost.json]

Micro benchmark (no broker): the agent's per-batch work, `assemble` (decode, route, one ONNX
call per variant, encode outputs and lake records) of B-row batches of Avro demo events,
then `Drift.observe` on the same batch, for one and for two served variants. It reports
CPU microseconds of the measuring thread per batch (`time.thread_time`: what other
processes on a shared machine do is not counted; median and best of the repeats) and the
share drift adds.

End to end (`--e2e N`, starts its own broker): the in-process agent drains N pre-loaded
events with drift off and on, alternating, R times each; events/s from first to last
output, and CPU microseconds per event of the agent's serving thread (less sensitive to
what else runs on the machine than wall-clock rates).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from benchmarks.throughput import (
    DEFAULT_PARTITIONS,
    MODELS_DIR,
    SCHEMA,
    engine_topology,
    local_broker,
    preload,
)
from streamer.agent import Agent
from streamer.assembly import Destinations, assemble
from streamer.codecs import make_decoder, make_encoder
from streamer.config import Topology
from streamer.demo.data import FEATURES, feature_matrix, generate_transactions
from streamer.demo.train import ensure_models
from streamer.drift import Drift, build_profile, profile_topic, write_profile
from streamer.inference import ShadowRunner
from streamer.kafka.admin import create_topics
from streamer.metrics import Metrics
from streamer.models import Model, load_model
from streamer.routing import Router
from streamer.testing import unique
from streamer.variants import VariantSet

DEFAULT_OUT = Path("benchmarks/results/drift_cost.json")


class _Message:
    """What `assemble` reads of a consumed message."""

    def __init__(self, key: bytes, value: bytes, offset: int) -> None:
        self._key, self._value, self._offset = key, value, offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> None:
        return None

    def topic(self) -> str | None:
        return "in"

    def partition(self) -> int | None:
        return 0

    def offset(self) -> int | None:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_735_689_600_000 + self._offset)


def _topology(base: Path, variants: list[dict[str, Any]], profile: Path | None) -> Topology:
    spec: dict[str, Any] = {
        "name": "bench",
        "input": {"topic": "in", "format": "avro", "schema": str(SCHEMA)},
        "features": list(FEATURES),
        "variants": variants,
        "output": {"topic": "out"},
        "lake": {"topic": "lake"},
        "dead_letter": {"topic": "dlq"},
        "metrics": {"port": None},
    }
    if profile is not None:
        spec["drift"] = {"profile": str(profile)}
    return Topology.model_validate(spec, context={"base_dir": base})


def micro(batches: int, batch_size: int, repeats: int, served: int) -> dict[str, Any]:
    """Per-batch microseconds of assemble, and of drift's observe after it."""
    paths = ensure_models(MODELS_DIR)
    stems = ["fraud_v2", "fraud_v3"][:served]
    specs = [{"name": s, "model": str(paths[s]), "weight": 1.0} for s in stems]
    models: dict[str, Model] = {s: load_model(paths[s], len(FEATURES)) for s in stems}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        plain = _topology(base, specs, None)
        reference = generate_transactions(10_000, seed=1)
        profile = build_profile(plain, models, feature_matrix(reference), 10, source="bench")
        write_profile(profile, base / "profile.json")
        with_drift = _topology(base, specs, base / "profile.json")
        drift = Drift.for_topology(with_drift, models, Metrics())
    assert drift is not None
    encoder = make_encoder("avro", SCHEMA)
    events = generate_transactions(batches * batch_size, seed=2)
    messages = [_Message(str(e["id"]).encode(), encoder.encode(e), i) for i, e in enumerate(events)]
    chunks = [messages[i : i + batch_size] for i in range(0, len(messages), batch_size)]
    decoder = make_decoder("avro", SCHEMA)
    dest = Destinations(
        topology="bench",
        output_topic="out",
        lake_topic="lake",
        dead_letter_topic="dlq",
        output_encoder=make_encoder("json", None),
        lake_encoder=make_encoder("json", None),
        features=list(FEATURES),
    )
    variants = VariantSet(Router({s: 1.0 for s in stems}), models, {})
    shadows = ShadowRunner(None)
    assemble_us: list[float] = []
    observe_us: list[float] = []
    try:
        for _ in range(repeats):
            a_total = o_total = 0.0
            for chunk in chunks:
                started = time.thread_time()
                result = assemble(chunk, decoder, variants, dest, shadows, fetched_at=time.time())
                middle = time.thread_time()
                drift.observe(result.features, result.scored)
                ended = time.thread_time()
                a_total += middle - started
                o_total += ended - middle
            assemble_us.append(a_total / len(chunks) * 1e6)
            observe_us.append(o_total / len(chunks) * 1e6)
    finally:
        shadows.close()
    assert not drift.failed
    a_med, o_med = statistics.median(assemble_us), statistics.median(observe_us)
    return {
        "served_variants": served,
        "batch_size": batch_size,
        "batches_per_repeat": len(chunks),
        "repeats": repeats,
        "assemble_us_per_batch": {"median": round(a_med, 1), "best": round(min(assemble_us), 1)},
        "drift_us_per_batch": {"median": round(o_med, 1), "best": round(min(observe_us), 1)},
        "drift_us_per_event": round(o_med / batch_size, 3),
        "drift_share_of_assemble": round(o_med / a_med, 4),
    }


def _drain(topology: Topology, n: int, timeout_s: float = 600.0) -> tuple[float, float]:
    """Events/s of an in-process agent from its first to its last output, and CPU
    microseconds per event of its serving thread (this one)."""
    agent = Agent(topology)

    def stopper() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            s = agent.stats
            if s.served + s.dead_letters >= n:
                break
            time.sleep(0.05)
        agent.stop()

    thread = threading.Thread(target=stopper, daemon=True)
    thread.start()
    cpu = time.thread_time()
    stats = agent.run()
    cpu = time.thread_time() - cpu
    thread.join(10)
    if stats.served < n or stats.first_output_at is None or stats.last_output_at is None:
        raise RuntimeError(f"served {stats.served} of {n}")
    if agent.drift is not None and (agent.drift.failed or agent.drift.observed < n):
        raise RuntimeError(f"drift measured {agent.drift.observed} of {n} events")
    return n / (stats.last_output_at - stats.first_output_at), cpu / n * 1e6


def end_to_end(n: int, repeats: int, batch_size: int) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    with local_broker() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        name = unique("bench-drift")
        first = engine_topology(name, bootstrap, f"{name}-in", DEFAULT_PARTITIONS, batch_size)
        preload(first, n)
        model = load_model(ensure_models(MODELS_DIR)["fraud_v2"], len(FEATURES))
        made = profile_topic(first, {"fraud_v2": model}, events=10_000)
        path = Path(tmp) / "profile.json"
        write_profile(made.profile, path)
        for _ in range(repeats):
            for mode in ("off", "on"):
                run = unique("bench-drift")
                overrides = {"drift": {"profile": str(path)}} if mode == "on" else None
                t = engine_topology(
                    run, bootstrap, f"{name}-in", DEFAULT_PARTITIONS, batch_size, overrides
                )
                create_topics(t)
                rate, us = _drain(t, n)
                rates[mode].append(rate)
                cpu[mode].append(us)
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    cpu_off, cpu_on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    return {
        "events": n,
        "repeats": repeats,
        "events_per_s_off": [round(r) for r in rates["off"]],
        "events_per_s_on": [round(r) for r in rates["on"]],
        "median_off": round(off),
        "median_on": round(on),
        "on_over_off": round(on / off, 4),
        "serving_thread_cpu_us_per_event_off": [round(c, 2) for c in cpu["off"]],
        "serving_thread_cpu_us_per_event_on": [round(c, 2) for c in cpu["on"]],
        "cpu_on_over_off": round(cpu_on / cpu_off, 4),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.drift_cost")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--e2e", type=int, default=0, help="events per end-to-end drain (0: none)")
    parser.add_argument("--e2e-repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "micro": [micro(args.batches, args.batch_size, args.repeats, s) for s in (1, 2)]
    }
    for m in result["micro"]:
        print(
            f"{m['served_variants']} served variant(s), {m['batch_size']}-row batches: "
            f"assemble {m['assemble_us_per_batch']['median']:.0f} us/batch, drift "
            f"{m['drift_us_per_batch']['median']:.0f} us/batch "
            f"(best {m['drift_us_per_batch']['best']:.0f}; "
            f"{m['drift_share_of_assemble']:.1%} of assemble)"
        )
    if args.e2e:
        e2e = end_to_end(args.e2e, args.e2e_repeats, args.batch_size)
        result["end_to_end"] = e2e
        print(
            f"end to end, {e2e['events']:,} events: drift off {e2e['median_off']:,} ev/s, "
            f"on {e2e['median_on']:,} ev/s (on/off {e2e['on_over_off']:.3f}; runs "
            f"off {e2e['events_per_s_off']}, on {e2e['events_per_s_on']}); serving thread "
            f"CPU us/event off {e2e['serving_thread_cpu_us_per_event_off']}, "
            f"on {e2e['serving_thread_cpu_us_per_event_on']} "
            f"(on/off {e2e['cpu_on_over_off']:.3f})"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
