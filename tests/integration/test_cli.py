"""The `streamer` command against real brokers: kafka lifecycle, topics, run's exit codes."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from streamer.cli import app
from streamer.kafka.local import LocalKafka
from tests.conftest import ROOT, TopologyFactory

pytestmark = pytest.mark.integration

runner = CliRunner()


def _streamer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_kafka_start_status_stop_lifecycle(tmp_path: Path) -> None:
    port = _unused_port()
    common = ["--port", str(port), "--data-dir", str(tmp_path / "broker")]
    assert _streamer("kafka", "status", *common).returncode == 1
    started = _streamer("kafka", "start", *common)
    try:
        assert started.returncode == 0, started.stderr
        assert f"127.0.0.1:{port}" in started.stdout
        again = _streamer("kafka", "start", *common)
        assert again.returncode == 0 and "already running" in again.stdout
        assert _streamer("kafka", "status", *common).returncode == 0
    finally:
        stopped = _streamer("kafka", "stop", *common)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert _streamer("kafka", "status", *common).returncode == 1
    assert "not running" in _streamer("kafka", "stop", *common).stdout


def test_kafka_start_refuses_a_port_someone_else_holds(
    kafka_broker: LocalKafka, tmp_path: Path
) -> None:
    result = runner.invoke(
        app, ["kafka", "start", "--port", str(kafka_broker.port), "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "in use by another process" in result.output


def test_topics_create_is_idempotent(make_topology: TopologyFactory) -> None:
    topology = make_topology(create=False)
    first = runner.invoke(app, ["topics", "create", str(topology.source), "--partitions", "4"])
    assert first.exit_code == 0, first.output
    assert f"{topology.input.topic}: created (4 partitions)" in first.output
    second = runner.invoke(app, ["topics", "create", str(topology.source)])
    assert second.exit_code == 0, second.output
    assert f"{topology.input.topic}: exists (4 partitions)" in second.output


def test_run_fails_in_one_line_when_topics_are_missing(make_topology: TopologyFactory) -> None:
    topology = make_topology(create=False)
    result = _streamer("run", str(topology.source), "--log-level", "error")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {topology.source}: topic(s) {topology.input.topic}, {topology.output.topic}, "
        f"{topology.lake.topic}, {topology.dead_letter.topic} do not exist; create them with "
        f"`streamer topics create {topology.source}`"
    ]


def test_run_fails_in_one_line_when_the_broker_is_unreachable(
    make_topology: TopologyFactory, tmp_path: Path
) -> None:
    topology = make_topology(create=False)
    assert topology.source is not None
    spec = yaml.safe_load(topology.source.read_text())
    spec["kafka"]["bootstrap_servers"] = f"127.0.0.1:{_unused_port()}"
    path = tmp_path / "unreachable.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = _streamer("run", str(path), "--connect-timeout", "2", "--log-level", "critical")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Kafka" in lines[0], result.stderr


def test_demo_runs_end_to_end(kafka: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`streamer demo` on a copy of the repo's demo topology (own topics, no metrics ports):
    served, rewarded, and the controller's weights in force at the end."""
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    (tmp_path / "topologies").mkdir()
    spec = yaml.safe_load((ROOT / "topologies" / "fraud.yaml").read_text())
    suffix = tmp_path.name[-8:].replace("_", "-")
    for section in ("input", "output", "lake", "dead_letter"):
        spec[section]["topic"] = f"{spec[section]['topic']}-{suffix}"
    spec["routing"]["control_topic"] = f"{spec['routing']['control_topic']}-{suffix}"
    for key in ("feedback_topic", "checkpoint_topic"):  # the checkpoints' default follows
        if spec["bandit"].get(key):
            spec["bandit"][key] = f"{spec['bandit'][key]}-{suffix}"
    spec["name"] = f"fraud-{suffix}"
    spec["metrics"] = {"port": None}
    spec["bandit"]["metrics_port"] = None
    assert spec["routing"]["strategy"] == "bandit"
    topology = tmp_path / "topologies" / "fraud.yaml"
    topology.write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("STREAMER_BOOTSTRAP_SERVERS", kafka)
    result = runner.invoke(
        app, ["demo", "--topology", str(topology), "--events", "3000", "--rate", "3000"]
    )
    assert result.exit_code == 0, result.output
    out = result.output
    # The copy starts without models: trained, and the challenger's directory laid out.
    assert "creating demo models in" in out
    assert (tmp_path / "models" / "challenger" / "1" / "model.onnx").is_file()
    assert f"0-3 s later on fraud-feedback-{suffix}" in out
    # The live view: rewards joined; each served variant's weight, share of the last second,
    # version and mean reward (none before its first reward).
    live = re.compile(
        r"^t= *\d+\.\ds served +[\d,]+ dl +[\d,]+ +[\d,]+ ev/s rw +(?P<rw>[\d,]+)"
        r" \| champion w(?P<w1>[01]\.\d\d) +(\d+%|-) v fraud_v1 r(-|0\.\d{3}|1\.000)"
        r" \| challenger w(?P<w2>[01]\.\d\d) +(\d+%|-) v 1 r(-|0\.\d{3}|1\.000)$"
    )
    lines = out.splitlines()
    matches = [m for m in map(live.match, lines) if m]
    assert len(matches) == len([line for line in lines if line.startswith("t=")]), out
    assert all(abs(float(m["w1"]) + float(m["w2"]) - 1) < 0.015 for m in matches), out
    assert int(matches[-1]["rw"].replace(",", "")) > 0, out
    assert all(len(line) < 150 for line in lines if line.startswith("t=")), out
    assert "events in        3000" in out
    served = int(out.split("predictions out")[1].split()[0])
    dead = int(out.split("dead letters")[-1].split()[0])
    assert served + dead == 3000 and 0 < dead < 100
    assert "champion" in out and "challenger" in out
    assert "model versions   challenger 1, champion fraud_v1" in out
    assert f"shadow scored    {served}" in out
    # The closed loop: one reward per prediction, all joined; accuracy per variant; the split.
    rewards = re.search(
        r"rewards sent     (\d+)  \(1 when the prediction was right; (\d+) joined", out
    )
    assert rewards is not None, out
    assert int(rewards[1]) == served and int(rewards[2]) == served, out
    means = re.search(
        r"mean reward      challenger (0\.\d{4}) \((\d+)\), champion (0\.\d{4}) \((\d+)\)", out
    )
    assert means is not None, out
    assert int(means[2]) + int(means[4]) == served
    assert all(0.9 < float(means[i]) < 1 for i in (1, 3)), out  # fraud is ~2.6% of events
    split = re.search(
        r"final split      challenger (\d\.\d\d), champion (\d\.\d\d)  \((\d+) controller", out
    )
    assert split is not None, out
    assert abs(float(split[1]) + float(split[2]) - 1) < 0.015 and int(split[3]) >= 1, out


def test_run_fails_in_one_line_on_an_invalid_librdkafka_setting(
    make_topology: TopologyFactory,
) -> None:
    topology = make_topology(
        create=False,
        kafka=lambda _: {"bootstrap_servers": "127.0.0.1:1", "config": {"no.such.setting": 1}},
    )
    result = _streamer(
        "run", str(topology.source), "--connect-timeout", "1", "--log-level", "error"
    )
    assert result.returncode == 1
    logs = [line for line in result.stderr.splitlines() if line.startswith("{")]  # JSON lines
    lines = [line for line in result.stderr.splitlines() if line not in logs]
    assert len(lines) == 1 and "no.such.setting" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_kafka_start_reports_a_broker_that_dies_during_start_up(tmp_path: Path) -> None:
    port = _unused_port()
    with socket.socket() as blocker:  # hold the controller port so the broker cannot bind it
        blocker.bind(("127.0.0.1", port + 1))
        blocker.listen()
        result = _streamer("kafka", "start", "--port", str(port), "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: the broker exited during start-up; see {tmp_path / 'server.log'}"
    ]
    assert (
        _streamer("kafka", "status", "--port", str(port), "--data-dir", str(tmp_path)).returncode
        == 1
    )
