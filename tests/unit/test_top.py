"""`streamer top`'s arithmetic and view, fed with real metrics text (no Kafka, no terminal)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from streamer.config import Topology, load_topology
from streamer.metrics import ControllerMetrics, Metrics, observe_many
from streamer.top import (
    WINDOW,
    Target,
    View,
    discover,
    parse,
    parse_targets,
    quantile,
    rate,
    value,
)


def _drift_text(features: dict[tuple[str, str], float], predictions: dict[str, float]) -> str:
    registry = CollectorRegistry()
    feature = Gauge("streamer_feature_drift_psi", "", ["feature", "variant"], registry=registry)
    prediction = Gauge("streamer_prediction_drift_psi", "", ["variant"], registry=registry)
    for (name, variant), v in features.items():
        feature.labels(name, variant).set(v)
    for variant, v in predictions.items():
        prediction.labels(variant).set(v)
    return generate_latest(registry).decode()


class Agent:
    """An agent's metrics, moved along by hand."""

    def __init__(self) -> None:
        self.m = Metrics()
        self.m.variant_weight.labels("champion").set(0.7)
        self.m.variant_weight.labels("challenger").set(0.3)
        self.m.model_info.labels("champion", "fraud_v1", "ab").set(1)
        self.m.model_info.labels("challenger", "2", "cd").set(1)
        self.m.model_info.labels("candidate", "fraud_v3", "ef").set(1)

    def serve(self, events: int, seconds: float) -> None:
        m = self.m
        m.events_consumed.inc(events)
        m.batch_size.observe(events / 2)
        m.batch_size.observe(events / 2)
        observe_many(m.end_to_end_seconds, np.full(events, seconds))
        m.predictions.labels("champion", "false").inc(events * 0.7)
        m.predictions.labels("challenger", "false").inc(events * 0.3)
        m.predictions.labels("candidate", "true").inc(events)
        m.dead_letters.labels("undecodable").inc(2)
        m.consumer_lag.labels("0").set(5)
        m.consumer_lag.labels("1").set(7)

    def text(self, drift: str = "") -> str:
        return self.m.render().decode() + drift


def test_parse_reads_prometheus_text() -> None:
    agent = Agent()
    agent.serve(100, 0.003)
    samples = parse(agent.text())
    assert value(samples, "streamer_events_consumed_total") == 100
    assert value(samples, "streamer_variant_weight", variant="challenger") == 0.3
    assert value(samples, "streamer_consumer_lag") == 12
    assert value(samples, "streamer_feature_drift_psi") is None


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, {0.001: 0, 0.005: 10, float("inf"): 10}, 0.003),
        (0.99, {0.001: 0, 0.005: 10, float("inf"): 10}, 0.00496),
        (0.5, {0.001: 4, 0.005: 8, float("inf"): 8}, 0.001),
        (0.5, {0.001: 5, 0.005: 5, float("inf"): 10}, 0.001),  # beyond the last bound
        (0.5, {0.001: 0, float("inf"): 0}, None),  # nothing observed
        (0.5, {}, None),
    ],
)
def test_quantile_is_prometheus_histogram_quantile(
    q: float, buckets: dict[float, float], expected: float | None
) -> None:
    found = quantile(q, buckets)
    assert found == pytest.approx(expected) if expected is not None else found is None


def test_rates_come_from_the_window_and_survive_a_restart() -> None:
    agent = Agent()
    target = Target("a:1")
    target.record(agent.text(), None, at=10.0)
    assert rate(target.history, "streamer_events_consumed_total") is None  # one scrape
    agent.serve(600, 0.003)
    target.record(agent.text(), None, at=13.0)
    assert rate(target.history, "streamer_events_consumed_total") == pytest.approx(200)
    restarted = Agent()
    restarted.serve(30, 0.003)
    for i in range(WINDOW):
        target.record(restarted.text(), None, at=14.0 + i)
    # The counter went down: the agent restarted, and its count started from 0.
    assert rate(target.history, "streamer_events_consumed_total") == pytest.approx(30 / 5)
    target.record(restarted.text(), None, at=19.0)  # the last scrape before it leaves
    assert rate(target.history, "streamer_events_consumed_total") == 0.0
    assert len(target.history) == WINDOW + 1
    target.record(None, "connection refused", at=20.0)
    assert target.error == "connection refused" and len(target.history) == WINDOW + 1


def _view(agents: list[Agent], drift: str = "") -> View:
    targets = [Target(f"10.0.0.{i}:9100") for i in range(len(agents))]
    controller = ControllerMetrics()
    controller.mean_reward.labels("champion").set(0.97)
    controller.mean_reward.labels("challenger").set(0.955)
    controller.pulls.labels("champion").set(1234)
    controller.weight.labels("champion").set(0.7)
    controller.weight.labels("challenger").set(0.3)
    controller.pending.set(42)
    ctl = Target("10.0.0.9:9101")
    for at in (0.0, 2.0):
        for agent, target in zip(agents, targets, strict=True):
            if at:
                agent.serve(1000, 0.003)
            target.record(agent.text(drift), None, at)
        controller.records.labels("lake").inc(100)
        ctl.record(controller.render().decode(), None, at)
    return View("fraud", [*targets, ctl])


def _line(lines: list[str], start: str) -> list[str]:
    (found,) = [line for line in lines if line.startswith(start)]
    return found.split()


def test_view_shows_rates_latency_weights_dead_letters_and_the_controller() -> None:
    drift = _drift_text(
        {("amount", "champion"): 0.31, ("hour", "champion"): 0.02, ("amount", "challenger"): 0.1},
        {"champion": 0.05},
    )
    view = _view([Agent(), Agent()], drift)
    assert [t.kind for t in view.targets] == ["agent", "agent", "controller"]
    lines = view.lines()
    header = _line(lines, "agent")
    assert header == ["agent", "events/s", "p50", "ms", "p99", "ms", "batch", "dead/s", "lag"]
    # 1000 events in 2 s each; all at 3 ms: p50 and p99 within the (2.5, 5] ms bucket.
    assert _line(lines, "10.0.0.0:9100") == [
        "10.0.0.0:9100",
        "500",
        "3.8",
        "5.0",
        "500",
        "1.0",
        "12",
    ]
    assert _line(lines, "total") == [
        "total",
        "(2",
        "agents)",
        "1,000",
        "3.8",
        "5.0",
        "500",
        "2.0",
        "24",
    ]
    champion = _line(lines, "champion")
    assert champion == [
        "champion",
        "fraud_v1",
        "0.700",
        "700",
        "0.050",
        "0.310",
        "amount",
        "0.970",
        "1,234",
        "0.700",
    ]
    assert _line(lines, "challenger") == [
        "challenger",
        "2",
        "0.300",
        "300",
        "-",
        "0.100",
        "amount",
        "0.955",
        "-",
        "0.300",
    ]
    assert _line(lines, "candidate")[:4] == ["candidate", "fraud_v3", "shadow", "1,000"]
    assert _line(lines, "dead letters") == ["dead", "letters", "undecodable", "4", "(2.0/s)"]
    assert _line(lines, "feature drift") == ["feature", "drift", "amount", "0.310", "hour", "0.020"]
    controller = " ".join(_line(lines, "controller"))
    assert "10.0.0.9:9101" in controller and "pending 42" in controller
    assert "records/s 50.0" in controller
    assert all(len(line) < 130 for line in lines)


def test_view_without_drift_or_answers_shows_dashes_and_why() -> None:
    view = _view([Agent()])
    lines = view.lines()
    assert _line(lines, "feature drift") == ["feature", "drift", "-"]
    assert _line(lines, "champion")[4:6] == ["-", "-"]  # no drift gauges: "-"
    view.targets[0].record(None, "connection refused", 3.0)
    assert _line(view.lines(), "10.0.0.0") == ["10.0.0.0:9100", "down:", "connection", "refused"]
    waiting = _line(View("fraud", [Target("x:1", name="h-1-a")]).lines(), "x:1")
    assert waiting == ["x:1", "h-1-a", "waiting", "for", "a", "first", "scrape"]


def test_refresh_scrapes_every_target_and_keeps_history_across_rediscovery() -> None:
    agent = Agent()
    agent.serve(10, 0.001)
    view = View("fraud", parse_targets("a:1, b:2,"))
    assert [t.address for t in view.targets] == ["a:1", "b:2"]
    asked: list[str] = []

    def fetch(url: str) -> tuple[str | None, str | None]:
        asked.append(url)
        return (agent.text(), None) if "a:1" in url else (None, "timed out")

    view.refresh(fetch)
    assert sorted(asked) == ["http://a:1/metrics", "http://b:2/metrics"]
    first = view.targets[0]
    assert len(first.history) == 1 and view.targets[1].error == "timed out"
    view.set_targets([Target("a:1", name="host-1-abc", kind="agent"), Target("c:3")])
    assert view.targets[0] is first and first.name == "host-1-abc"
    assert [t.address for t in view.targets] == ["a:1", "c:3"]


def _topology(tmp_path: Path, **extra: Any) -> Topology:
    spec: dict[str, Any] = {
        "name": "fraud",
        "input": {"topic": "in"},
        "features": ["x"],
        "variants": [
            {"name": "a", "model": "a.onnx", "weight": 1},
            {"name": "b", "model": "b.onnx", "weight": 1},
        ],
        "output": {"topic": "out"},
        "lake": {"topic": "lake"},
        "dead_letter": {"topic": "dlq"},
        **extra,
    }
    path = tmp_path / "fraud.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_topology(path)


def _report(**fields: Any) -> bytes:
    return orjson.dumps({"topology": "fraud", "ts": int(time.time() * 1000), **fields})


def test_discovery_reads_the_agents_reports_and_adds_the_controller(tmp_path: Path) -> None:
    topology = _topology(
        tmp_path,
        routing={"strategy": "bandit", "control_topic": "ctl"},
        bandit={"feedback_topic": "fb", "metrics_port": 9200},
        metrics={"port": 9300, "host": "0.0.0.0"},
    )
    old = int((time.time() - 600) * 1000)
    records: list[tuple[str, bytes | None]] = [
        ("h1-1-a", _report(host="h1", metrics="h1:41000")),
        ("h2-2-b", _report(host="h2")),  # an agent of an older version: host and metrics.port
        ("h3-3-c", _report(host="h3", metrics="h3:1", ts=old)),  # not reporting any more
        ("h4-4-d", _report(host="h4", metrics="h4:1")),
        ("h4-4-d", None),  # stopped
        ("h5-5-e", _report(host="h5", metrics="h5:1", topology="other")),
        ("h6-6-f", b"not json"),
    ]
    found = discover(topology, lambda: records)
    assert [(t.address, t.name, t.kind) for t in found] == [
        ("h1:41000", "h1-1-a", "agent"),
        ("h2:9300", "h2-2-b", "agent"),
        ("127.0.0.1:9200", "controller", "controller"),
    ]


def test_discovery_without_a_status_topic_uses_the_configured_port(tmp_path: Path) -> None:
    found = discover(_topology(tmp_path, metrics={"port": 9300}))
    assert [(t.address, t.kind) for t in found] == [("127.0.0.1:9300", "agent")]
    assert discover(_topology(tmp_path, metrics={"port": 0})) == []
