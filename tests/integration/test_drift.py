"""Drift on the real broker: `streamer profile` writes a reference from a topic's events, and
an agent serving against it keeps the drift gauges low for the same distribution and
pushes them over the threshold for a shifted one."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import cast

import pytest
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]
from typer.testing import CliRunner

from streamer.cli import app
from streamer.config import Topology
from streamer.demo.data import FEATURES, generate_transactions
from streamer.drift import load_profile
from streamer.kafka.clients import make_admin
from streamer.testing import RunningAgent, produce
from tests.conftest import TopologyFactory, keyed_transactions
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

runner = CliRunner()
THRESHOLD = 0.2


def _create_topic(topology: Topology, topic: str) -> None:
    admin = make_admin(topology.kafka)  # kept alive until its request is answered
    futures = admin.create_topics([NewTopic(topic, num_partitions=2)])
    for future in futures.values():
        future.result(30)


def _psis(running: RunningAgent, variant: str) -> dict[str, float]:
    m = running.agent.metrics
    return {
        f: m.value("streamer_feature_drift_psi", feature=f, variant=variant) for f in FEATURES
    } | {"prediction": m.value("streamer_prediction_drift_psi", variant=variant)}


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def test_profile_then_serve_unshifted_and_shifted_events(
    make_topology: TopologyFactory, kafka: str, demo_models: dict[str, Path], tmp_path: Path
) -> None:
    profile_path = tmp_path / "profiles" / "fraud.json"
    topology = make_topology(
        partitions=2,
        metrics={"port": 0},
        variants=[
            {"name": "champion", "model": str(demo_models["fraud_v2"]), "weight": 0.5},
            {"name": "challenger", "model": str(demo_models["fraud_v3"]), "weight": 0.5},
            {"name": "candidate", "model": str(demo_models["fraud_v1"]), "shadow": True},
        ],
        drift={"profile": str(profile_path), "window": 1000, "min_events": 500},
    )
    reference_topic = f"{topology.name}-reference"
    _create_topic(topology, reference_topic)
    produce(kafka, reference_topic, keyed_transactions(generate_transactions(3000, seed=31)))

    # Before the profile exists the topology does not validate, naming drift.profile.
    result = runner.invoke(app, ["validate", str(topology.source)])
    assert result.exit_code == 1
    assert f"drift.profile: {profile_path}: file not found" in result.stderr

    # More events asked for than the topic holds: it reads them all and stops at the end.
    result = runner.invoke(
        app,
        ["profile", str(topology.source), "--from-topic", reference_topic, "--events", "5000"],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"{profile_path}: 3000 events of {reference_topic}; 4 features, "
        "variants champion (probabilities), challenger (probabilities)"
    )
    profile = load_profile(profile_path)
    assert profile.events == 3000 and profile.topology == topology.name
    assert list(profile.features) == list(FEATURES)
    assert set(profile.predictions) == {"champion", "challenger"}
    assert profile.predictions["challenger"].version == "fraud_v3"
    assert runner.invoke(app, ["validate", str(topology.source)]).exit_code == 0

    produce(kafka, topology.input.topic, keyed_transactions(generate_transactions(3000, seed=32)))
    with RunningAgent(topology) as running:
        drift = running.agent.drift
        assert drift is not None
        running.wait_until(3000)
        wait_for(lambda: drift.observed == 3000 and not drift.stale, "the drift gauges")
        unshifted = {v: _psis(running, v) for v in ("champion", "challenger")}
        port = running.agent.metrics_port
        assert port is not None
        body = _metrics(port)

        shifted = [
            {**e, "id": f"shifted-{e['id']}", "amount": cast(float, e["amount"]) * 5}
            for e in generate_transactions(3000, seed=33)
        ]
        produce(kafka, topology.input.topic, keyed_transactions(shifted))
        running.wait_until(6000)
        wait_for(lambda: drift.observed == 6000 and not drift.stale, "the drift gauges")
        after = {v: _psis(running, v) for v in ("champion", "challenger")}
        windows = running.agent.metrics.by_label("streamer_drift_window_events", "variant")
        stats = running.stop()
    assert stats.served == 6000 and stats.dead_letters == 0

    for variant, psis in unshifted.items():
        assert all(0 < v < THRESHOLD for v in psis.values()), (variant, psis)
    for variant, psis in after.items():
        assert psis["amount"] > THRESHOLD, (variant, psis)
        assert psis["hour"] < THRESHOLD and psis["merchant_risk"] < THRESHOLD, (variant, psis)
    assert set(windows) == {"champion", "challenger"}  # the shadow is not measured
    assert all(1000 <= n < 1000 + 256 + 1000 // 32 for n in windows.values()), windows
    for name in (
        'streamer_feature_drift_psi{feature="amount",variant="champion"}',
        'streamer_prediction_drift_psi{variant="challenger"}',
        'streamer_feature_drift_mean_shift{feature="hour",variant="champion"}',
    ):
        assert name in body, body


def _profile_fails(topology: Topology, *args: str) -> str:
    result = runner.invoke(app, ["profile", str(topology.source), *args])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_profile_refuses_too_few_events_and_a_missing_topic(
    make_topology: TopologyFactory, kafka: str, tmp_path: Path
) -> None:
    topology = make_topology(partitions=1)
    out = tmp_path / "p.json"
    produce(kafka, topology.input.topic, keyed_transactions(generate_transactions(50, seed=3)))
    produce(kafka, topology.input.topic, [(b"junk", b"\x00not avro")])
    line = _profile_fails(topology, "-o", str(out))
    assert line.endswith(
        f"{topology.input.topic}: 50 decodable event(s) of 51 read; a profile needs at least 100"
    )
    line = _profile_fails(topology, "-o", str(out), "--from-topic", f"{topology.name}-absent")
    assert f"{topology.name}-absent" in line
    assert not out.exists()

    # Without -o or drift.profile there is nowhere to write: a usage error.
    result = runner.invoke(app, ["profile", str(topology.source)])
    assert result.exit_code == 2
