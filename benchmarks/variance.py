"""Why the engine's throughput varies more than the limit's: many alternating drains of
both, with what else the machine was doing during each.

    .venv/bin/python -m benchmarks.variance [--events N] [--repeats R]
        [--out benchmarks/results/variance.json]

Per drain (see `benchmarks.throughput.measure`): events/s, the contender's CPU per event,
the cores it used, its main thread's time on a CPU and time runnable but waiting for one
(/proc/PID/schedstat), the broker's cores and everyone else's. Then, per contender, the
spread of each and its rank correlation with events/s: a cost per event that stays put
while the rate moves with the CPU left over says the variation comes from the machine,
not from the contender's own work.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import FACTORS, variance_table
from benchmarks.throughput import bench_broker, machine_facts, run_contenders


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    rx = np.argsort(np.argsort(x)).astype(float)
    ry = np.argsort(np.argsort(y)).astype(float)
    return round(float(np.corrcoef(rx, ry)[0, 1]), 2)


def analyse(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in sorted({r["mode"] for r in runs}):
        mine = [r for r in runs if r["mode"] == mode]
        rates = [r["events_per_s"] for r in mine]
        median = statistics.median(rates)
        entry: dict[str, Any] = {
            "runs": len(mine),
            "median_events_per_s": round(median, 1),
            "range_pct_of_median": round((max(rates) - min(rates)) / median * 100, 1),
            "cv_pct": round(statistics.pstdev(rates) / statistics.mean(rates) * 100, 1),
            "factors": {},
        }
        for f in FACTORS:
            values = [float(r.get(f, 0.0)) for r in mine]
            mid = statistics.median(values)
            entry["factors"][f] = {
                "median": round(mid, 4),
                "min": round(min(values), 4),
                "max": round(max(values), 4),
                "spearman_with_events_per_s": spearman(values, rates),
            }
        out[mode] = entry
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.variance")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--modes", nargs="+", default=["limit", "engine"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/variance.json"))
    args = parser.parse_args(argv)
    machine = machine_facts()
    with bench_broker() as broker:
        result = run_contenders(broker, args.modes, args.events, args.repeats)
    analysis = analyse(result["runs"])
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    data = {
        "benchmark": "variance",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "config": result["config"],
        "analysis": analysis,
        "runs": result["runs"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    table = variance_table(data)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"written {args.out} and {args.out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
