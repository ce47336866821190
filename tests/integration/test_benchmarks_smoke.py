"""The benchmark harness (`make bench`) at a tiny size, so it never rots.

Runs the same functions `python -m benchmarks.throughput` runs, against the session's
broker: every contender drains 2,000 events in its own process (Faust only where
faust-streaming is installed: the `bench` extra), one short open-loop latency run, the
tables and (with matplotlib) the plots. Asserts that results come out and agree with each
other; never how fast anything was.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import report, throughput
from benchmarks.throughput import Broker

pytestmark = pytest.mark.integration

EVENTS = 2_000
HAS_FAUST = importlib.util.find_spec("faust") is not None


@pytest.fixture
def models(demo_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """The session's small demo models instead of the repository's models/ (trained on
    first use)."""
    directory = demo_models["fraud_v2"].parent
    monkeypatch.setattr(throughput, "MODELS_DIR", directory)
    return directory


def test_every_contender_drains_the_events_and_reports_its_costs(
    kafka: str, models: Path, tmp_path: Path
) -> None:
    modes = ["limit", "limit-job", "engine", "engine-nolake", "per-event"] + (
        ["faust"] if HAS_FAUST else []
    )
    result = throughput.run_contenders(Broker(kafka, None), modes, EVENTS, repeats=1)

    ran = [r["mode"] for r in result["runs"]]
    assert sorted(ran) == sorted(modes)
    for run in result["runs"]:
        assert run["records"] == EVENTS  # measure() checked keys and committed offsets
        assert run["events_per_s"] > 0
        assert run["cpu_s_per_1k"] >= 0
        assert run["peak_rss_mb"] > 0
    engine = next(r for r in result["runs"] if r["mode"] == "engine")
    assert engine["dead_letters"] == 0 and engine["largest_batch"] >= 1
    summary = result["summary"]
    assert summary["engine"]["x_limit"] == pytest.approx(
        summary["engine"]["median_events_per_s"] / summary["limit"]["median_events_per_s"],
        rel=0.01,
    )

    machine = throughput.machine_facts()
    machine["loadavg_at_end"] = machine["loadavg_at_start"]
    data: dict[str, Any] = {"benchmark": "throughput", "date": "now", "machine": machine}
    (tmp_path / "throughput.json").write_text(json.dumps(data | result))
    written = report.write_all(tmp_path)
    table = (tmp_path / "throughput.md").read_text()
    assert tmp_path / "throughput.md" in written
    for mode in ran:
        assert report.label(mode) in table
    assert (
        data["machine"]["cpu_model"] is not None
        or "model name" not in Path("/proc/cpuinfo").read_text()
    )


def test_an_open_loop_load_yields_latency_percentiles(kafka: str, models: Path) -> None:
    run = throughput.latency_run(Broker(kafka, None), "engine", rate=500, seconds=4)

    assert run["events"] == 2_000
    assert 0 < run["measured_events"] <= run["events"]
    assert 0 <= run["p50_ms"] <= run["p99_ms"] <= run["p99_9_ms"] <= run["max_ms"]
    assert run["peak_rss_mb"] > 0


@pytest.mark.slow
def test_soak_samples_rss_throughout(kafka: str, models: Path) -> None:
    """The soak's machinery for a minute (the real one: `make bench-soak`, 10 minutes)."""
    run = throughput.run_soak(Broker(kafka, None), rate=1_000, seconds=60)

    assert len(run["rss_samples"]) >= 5
    assert run["rss_samples"][0]["t_s"] <= 0 < run["rss_samples"][1]["t_s"]
    rss = run["rss_mb"]
    assert rss["ready"] > 20  # the agent with onnxruntime loaded, not a process just forked
    assert rss["max"] >= rss["after_warmup_median"] > 0 and isinstance(rss["flat"], bool)
    assert len(run["p99_by_minute_ms"]) == 1
