"""SASL/SCRAM over TLS end to end: `streamer kafka start --sasl-ssl`'s broker, the engine and
the bandit controller through it with nothing but the topology's `kafka.config`, and the one
line a client with wrong credentials (or none) gets.

The broker is this module's own: `LocalKafka(sasl_ssl=True)` on free ports, a CA and broker
certificate made by keytool in its data directory, the SCRAM user created at format time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer, Producer
from typer.testing import CliRunner

from streamer.cli import app
from streamer.config import Topology, load_topology
from streamer.control.record import parse
from streamer.control.topic import read_all
from streamer.demo.data import generate_transactions
from streamer.kafka.admin import create_topics
from streamer.kafka.local import (
    LocalKafka,
    StartResult,
    answers,
    client_config,
    free_port_pair,
    start,
    stop,
)
from streamer.testing import RunningAgent, RunningController, unique
from tests.conftest import SCHEMAS, TRANSACTION
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

EVENTS = 300


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalKafka, StartResult]]:
    """A SASL_SSL broker for this module alone, and how its start went."""
    broker = LocalKafka(
        port=free_port_pair(), data_dir=tmp_path_factory.mktemp("sasl-kafka"), sasl_ssl=True
    )
    result = start(broker)
    try:
        yield broker, result
    finally:
        stop(broker)


def _topology(
    broker: LocalKafka,
    models: dict[str, Path],
    directory: Path,
    config: dict[str, Any],
    name: str | None = None,
) -> Topology:
    """Two served variants, the bandit on, and `config` as the topology's kafka.config."""
    name = name or unique("sasl")
    spec: dict[str, Any] = {
        "name": name,
        "kafka": {"bootstrap_servers": broker.bootstrap, "config": config},
        "input": {
            "topic": f"{name}-in",
            "format": "avro",
            "schema": str(SCHEMAS / "transaction.avsc"),
        },
        "features": ["amount", "age_days", "hour", "merchant_risk"],
        "batching": {"max_batch_size": 256, "max_wait_ms": 20},
        "variants": [
            {"name": v, "model": str(models["fraud_v2"]), "weight": 1.0} for v in ("a", "b")
        ],
        "output": {"topic": f"{name}-out", "format": "json"},
        "lake": {"topic": f"{name}-lake", "format": "json"},
        "dead_letter": {"topic": f"{name}-dlq"},
        "routing": {"strategy": "bandit", "control_topic": f"{name}-control"},
        "bandit": {
            "feedback_topic": f"{name}-feedback",
            "min_rewards": 50,
            "update_interval_s": 1,
            "reward_window_s": 60,
            "seed": 7,
            "metrics_port": None,
        },
        "metrics": {"port": None},
        "topics": {"partitions": 2},
    }
    path = directory / f"{name}-{len(config)}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_topology(path)


def _streamer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _error_lines(stderr: str) -> list[str]:
    """stderr without log lines (JSON objects, or text lines that start with the date)."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not line[:4].isdigit() and not line.startswith("{")
    ]


def _clients(broker: LocalKafka) -> dict[str, str]:
    """What a producer or consumer of the secure broker needs, password included."""
    return {**client_config(broker), "bootstrap.servers": broker.bootstrap}


def _produce(config: dict[str, str], topic: str, items: list[tuple[str, bytes]]) -> None:
    producer = Producer({**config, "linger.ms": 5, "enable.idempotence": True})
    for key, value in items:
        producer.produce(topic, value, key.encode())
    assert producer.flush(60) == 0


def _consume(config: dict[str, str], topic: str, expected: int, timeout_s: float = 60.0) -> int:
    consumer = Consumer(
        {
            **config,
            "group.id": unique("sasl-reader"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen: set[bytes] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.2):
                assert msg.error() is None, msg.error()
                seen.add(msg.key() or b"")
    finally:
        consumer.close()
    return len(seen)


def test_the_broker_speaks_only_sasl_ssl(secure: tuple[LocalKafka, StartResult]) -> None:
    broker, result = secure
    config = client_config(broker)
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanisms"] == "SCRAM-SHA-512"
    assert answers(broker.bootstrap, 10.0, config)
    assert not answers(broker.bootstrap, 3.0)  # PLAINTEXT
    assert not answers(broker.bootstrap, 3.0, {**config, "sasl.password": "not-it"})
    for secret in (broker.password_file, broker.security_file, broker.home / "server.properties"):
        assert secret.stat().st_mode & 0o077 == 0, secret
    print(f"SASL_SSL broker started in {result.seconds:.1f}s")  # shown with -s


def test_kafka_start_and_status_show_the_client_settings_but_no_secret(
    secure: tuple[LocalKafka, StartResult],
) -> None:
    broker, _ = secure
    common = ["--port", str(broker.port), "--data-dir", str(broker.home)]
    cli = CliRunner()
    again = cli.invoke(app, ["kafka", "start", "--sasl-ssl", *common])
    assert again.exit_code == 0, again.output
    assert "already running" in again.output
    for line in (
        "security.protocol: SASL_SSL",
        "sasl.mechanisms: SCRAM-SHA-512",
        "sasl.username: streamer",
        f"sasl.password_file: {broker.password_file}",
        f"ssl.ca.location: {broker.ca_file}",
    ):
        assert line in again.output
    assert client_config(broker)["sasl.password"] not in again.output
    shown = cli.invoke(app, ["kafka", "status", *common])
    assert shown.exit_code == 0 and "SASL_SSL" in shown.output, shown.output
    plain = cli.invoke(app, ["kafka", "start", *common])
    assert plain.exit_code == 1
    assert "holds a SASL_SSL broker; start it with --sasl-ssl" in plain.output


def test_engine_and_controller_run_through_sasl_ssl(
    secure: tuple[LocalKafka, StartResult], demo_models: dict[str, Path], tmp_path: Path
) -> None:
    broker, result = secure
    # What `streamer kafka start --sasl-ssl` prints: the password by file.
    topology = _topology(broker, demo_models, tmp_path, result.topology_config)
    assert topology.bandit is not None and topology.routing.control_topic is not None
    create_topics(topology)
    config = _clients(broker)
    ids = [f"s{i}" for i in range(EVENTS)]
    events = [
        (key, TRANSACTION.encode({**e, "id": key}))
        for key, e in zip(ids, generate_transactions(EVENTS, seed=11), strict=True)
    ]
    _produce(config, topology.input.topic, events)

    with RunningController(topology) as controller, RunningAgent(topology) as agent:
        agent.wait_until(EVENTS, timeout_s=120)
        assert _consume(config, topology.output.topic, EVENTS) == EVENTS
        # Every decision rewarded, as a client would, through the same listener.
        _produce(
            config,
            topology.bandit.feedback_topic,
            [(key, json.dumps({"id": key, "reward": 1}).encode()) for key in ids],
        )
        wait_for(
            lambda: (
                controller.controller.stats.rewards.get("joined", 0) == EVENTS
                and controller.controller.stats.published >= 1
            ),
            "the controller to join every reward and publish weights",
            timeout_s=90,
        )
        served = agent.stop()
        decided = controller.stop()
    assert served.served == EVENTS and served.dead_letters == 0
    assert decided.rewards == {"joined": EVENTS}
    published = [parse(e.value) for e in read_all(topology.kafka, topology.routing.control_topic)]
    assert any(r.source == "controller" for r in published)
    lake = _consume(config, topology.lake.topic, EVENTS)
    assert lake == EVENTS


def test_wrong_password_fails_in_one_line_naming_the_reason(
    secure: tuple[LocalKafka, StartResult], demo_models: dict[str, Path], tmp_path: Path
) -> None:
    broker, result = secure
    good = _topology(broker, demo_models, tmp_path, result.topology_config)
    create_topics(good)
    wrong = f"wrong-{unique('pw')}"
    settings = {k: v for k, v in client_config(broker).items() if k != "sasl.password"}
    bad = _topology(
        broker, demo_models, tmp_path, {**settings, "sasl.password": wrong}, name=good.name
    )
    began = time.monotonic()
    run = _streamer("run", str(bad.source), "--connect-timeout", "5")
    took = time.monotonic() - began
    assert run.returncode == 1, run.stderr
    lines = _error_lines(run.stderr)
    assert len(lines) == 1, run.stderr
    assert "SASL authentication error" in lines[0], lines[0]
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in lines[0], lines[0]
    assert "check the security settings" in lines[0], lines[0]
    assert "Traceback" not in run.stderr
    for secret in (wrong, client_config(broker)["sasl.password"]):
        assert secret not in run.stderr and secret not in run.stdout
    assert took < 60, took


def test_a_plaintext_client_cannot_connect(
    secure: tuple[LocalKafka, StartResult], demo_models: dict[str, Path], tmp_path: Path
) -> None:
    broker, _ = secure
    plain = _topology(broker, demo_models, tmp_path, {})
    run = _streamer("run", str(plain.source), "--connect-timeout", "5")
    assert run.returncode == 1, run.stderr
    lines = _error_lines(run.stderr)
    assert len(lines) == 1, run.stderr
    assert f"cannot reach Kafka at {broker.bootstrap} within 5s" in lines[0], lines[0]
    assert "Traceback" not in run.stderr
