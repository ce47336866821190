"""Reload pause: how long a hot model reload stalls the batch loop.

    .venv/bin/python -m benchmarks.reload_pause [--events N] [--reloads R]
        [--out benchmarks/results/reload_pause.json]

Starts its own broker, pre-loads N demo events, and lets one in-process agent drain them
with a model-directory variant while new versions are dropped into the directory every
1.5 s (fraud_v2 and fraud_v3 in turn). The agent's control thread loads, checks and probes
each version while the batch loop keeps serving, then the swap happens between two
batches. The loop is timed batch by batch: the gaps between batch starts while a version
loads (and in the 100 ms after it is staged) against the gaps at all other times.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.throughput import (
    DEFAULT_PARTITIONS,
    MODELS_DIR,
    SCHEMA,
    local_broker,
    machine_facts,
    preload,
)
from streamer.agent import Agent
from streamer.config import Topology
from streamer.control.live import LiveControl
from streamer.demo.data import FEATURES
from streamer.demo.train import ensure_models
from streamer.repository import MODEL_FILE, ModelFile
from streamer.testing import RunningAgent, unique

DEFAULT_OUT = Path("benchmarks/results/reload_pause.json")
AFTER_SWAP_S = 0.1
"""A batch starting this soon after a load finished counts as affected by it."""


def topology(bootstrap: str, models: Path) -> Topology:
    name = unique("reload")
    return Topology.model_validate(
        {
            "name": name,
            "kafka": {"bootstrap_servers": bootstrap},
            "input": {"topic": f"{name}-in", "format": "avro", "schema": str(SCHEMA)},
            "features": list(FEATURES),
            "variants": [{"name": "m", "model": str(models)}],
            "models": {"poll_interval_s": 0.2},
            "output": {"topic": f"{name}-out", "format": "json"},
            "lake": {"topic": f"{name}-lake", "format": "json"},
            "dead_letter": {"topic": f"{name}-dlq"},
            "metrics": {"port": None},
            "topics": {"partitions": DEFAULT_PARTITIONS},
        }
    )


def add_version(directory: Path, version: int, source: Path) -> None:
    target = directory / str(version) / MODEL_FILE
    target.parent.mkdir(parents=True)
    partial = target.with_suffix(".partial")
    shutil.copyfile(source, partial)
    settled = time.time() - 5  # agents skip files written within the last second
    os.utime(partial, (settled, settled))
    partial.rename(target)


def run(events: int, reloads: int) -> dict[str, Any]:
    trained = ensure_models(MODELS_DIR)
    sources = [trained["fraud_v2"], trained["fraud_v3"]]
    batch_starts: list[float] = []
    loads: list[tuple[float, float]] = []
    original_load = LiveControl._load  # noqa: SLF001 - timing the real method

    def timed_load(self: LiveControl, name: str, file: ModelFile) -> Any:
        began = time.monotonic()
        try:
            return original_load(self, name, file)
        finally:
            loads.append((began, time.monotonic()))

    original_serve = Agent._serve  # noqa: SLF001

    def timed_serve(self: Agent, *args: Any) -> None:
        batch_starts.append(time.monotonic())
        original_serve(self, *args)

    with local_broker() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "m"
        add_version(directory, 1, sources[0])
        t = topology(bootstrap, directory)
        preload(t, events)
        LiveControl._load = timed_load  # type: ignore[method-assign]  # noqa: SLF001
        Agent._serve = timed_serve  # type: ignore[method-assign,assignment]  # noqa: SLF001
        try:
            with RunningAgent(t) as running:
                running.wait_until(events // 10)
                for k in range(reloads):
                    add_version(directory, k + 2, sources[(k + 1) % 2])
                    time.sleep(1.5)
                running.wait_until(events, timeout_s=600)
                stats = running.stop()
        finally:
            LiveControl._load = original_load  # type: ignore[method-assign]  # noqa: SLF001
            Agent._serve = original_serve  # type: ignore[method-assign]  # noqa: SLF001
    gaps = [(b - a, b) for a, b in itertools.pairwise(batch_starts)]

    def affected(at: float) -> bool:
        return any(began <= at <= ended + AFTER_SWAP_S for began, ended in loads)

    during = [g for g, at in gaps if affected(at)]
    other = [g for g, at in gaps if not affected(at) and at > batch_starts[0] + 1.0]
    ms = 1000.0
    return {
        "machine": machine_facts(),
        "events": events,
        "served": stats.served,
        "reloads_applied": len(loads),
        "load_ms": [round((e - b) * ms, 1) for b, e in loads],
        "batches": len(batch_starts),
        "gap_ms_other": _summary(other),
        "gap_ms_during_load": _summary(during),
    }


def _summary(gaps: Sequence[float]) -> dict[str, float]:
    if not gaps:
        return {}
    ordered = sorted(gaps)
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered) * 1000, 2),
        "p99": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 2),
        "max": round(ordered[-1] * 1000, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--reloads", type=int, default=8)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    result = run(args.events, args.reloads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
