"""Secrets never leave the process: every output of every command is captured and searched.

The topology carries `sasl.password` (through `${ENV}`), `ssl.key.password` (through
`_file`), `sasl.oauthbearer.client.secret`, `sasl.oauthbearer.config` and a custom
`my.api.token`, all holding one unique marker; librdkafka is asked to dump its settings
(`debug: conf`) and everything logs at debug. The marker must appear in no stdout, stderr
or /metrics, and every log line must be a JSON object that parses.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from streamer.config import Topology
from streamer.demo.data import generate_transactions
from streamer.testing import produce
from tests.conftest import TopologyFactory, keyed_transactions
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

RESULT_PREFIXES = ("error: ", "warning: ", "stopped: ")
"""Lines on stderr that are a command's own result, not log lines."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _streamer(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _log_entries(stderr: str, topology: str) -> list[dict[str, Any]]:
    """Every log line of a run's stderr, parsed; the result lines left out."""
    entries = []
    for line in stderr.splitlines():
        if line.startswith(RESULT_PREFIXES):
            continue
        entry = json.loads(line)  # anything else must be a JSON object
        assert isinstance(entry, dict), line
        assert {"ts", "level", "logger", "message"} <= entry.keys(), line
        assert entry.get("topology", topology) == topology, line
        entries.append(entry)
    return entries


@pytest.fixture
def marker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    secret = f"hunter2-{uuid.uuid4().hex}"
    monkeypatch.setenv("STREAMER_TEST_SECRET", f"{secret}-env")
    (tmp_path / "key-password").write_text(f"{secret}-file\n")
    return secret


def _secret_config(tmp_path: Path, marker: str) -> dict[str, Any]:
    return {
        "sasl.password": "${STREAMER_TEST_SECRET}",
        "ssl.key.password_file": str(tmp_path / "key-password"),
        "sasl.oauthbearer.client.secret": f"{marker}-oauth",
        "sasl.oauthbearer.config": f"principal=streamer extension_key={marker}-config",
        "debug": "conf",  # librdkafka logs every setting of every client
    }


def _topology(
    make_topology: TopologyFactory, kafka: str, config: dict[str, Any], **overrides: Any
) -> Topology:
    return make_topology(
        partitions=2,
        kafka=lambda _: {"bootstrap_servers": kafka, "config": config},
        routing=lambda name: {"control_topic": f"{name}-control"},
        metrics={"port": _free_port()},
        **overrides,
    )


def test_secrets_appear_in_no_log_error_output_or_metrics(
    make_topology: TopologyFactory, kafka: str, tmp_path: Path, marker: str
) -> None:
    topology = _topology(make_topology, kafka, _secret_config(tmp_path, marker))
    assert topology.source is not None
    config = topology.kafka.client_config()
    assert config["sasl.password"] == f"{marker}-env"  # the clients do get the secrets
    assert config["ssl.key.password"] == f"{marker}-file"
    path = str(topology.source)
    outputs: dict[str, str] = {}

    validated = _streamer("validate", path)
    assert validated.returncode == 0, validated.stderr
    outputs["validate"] = validated.stdout + validated.stderr

    # A serving agent: JSON logs at debug, its /metrics, `control show` and `top` beside it.
    produce(kafka, topology.input.topic, keyed_transactions(generate_transactions(300, seed=61)))
    log = tmp_path / "agent.log"
    with log.open("w") as stderr:
        agent = subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", path, "--log-level", "debug"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
    try:
        port = topology.metrics.port
        assert port is not None
        wait_for(lambda: _served(port) >= 300, "the agent to serve every event", timeout_s=90)
        metrics = _get(port, "/metrics")
        assert "streamer_events_consumed_total 300.0" in metrics
        outputs["metrics"] = metrics
        outputs["readyz"] = _get(port, "/readyz")
        shown = _streamer("control", path, "show")
        assert shown.returncode == 0, shown.stderr
        assert "agents: 1 reporting" in shown.stdout, shown.stdout
        outputs["control show"] = shown.stdout + shown.stderr
        top = _streamer("top", path, "--count", "2", "--interval", "0.2")  # discovered
        assert top.returncode == 0, top.stderr
        assert f"127.0.0.1:{port}" in top.stdout and "champion" in top.stdout, top.stdout
        outputs["top"] = top.stdout + top.stderr
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(60)
    assert code == 0, log.read_text()[-3000:]
    outputs["run"] = log.read_text()
    entries = _log_entries(outputs["run"], topology.name)
    messages = [e["message"] for e in entries]
    # The secrets were in play: librdkafka dumped them (redacted), and so did the agent.
    assert any("sasl.password = [redacted]" in m for m in messages), messages[:50]
    assert any(m.startswith("cluster settings:") for m in messages)
    assert any(e["logger"] == "streamer.kafka.librdkafka" for e in entries)

    # An unreachable cluster: the failure and the log of the attempts.
    unreachable = _topology(
        make_topology,
        f"127.0.0.1:{_free_port()}",
        _secret_config(tmp_path, marker),
        create=False,
    )
    for log_format in ("json", "text"):
        failed = _streamer(
            "run",
            str(unreachable.source),
            "--connect-timeout",
            "2",
            "--log-level",
            "debug",
            "--log-format",
            log_format,
        )
        assert failed.returncode == 1, failed.stderr
        assert "cannot reach Kafka" in failed.stderr.splitlines()[-1], failed.stderr
        if log_format == "json":
            _log_entries(failed.stderr, unreachable.name)
        outputs[f"run unreachable ({log_format})"] = failed.stdout + failed.stderr

    # A secret under a name librdkafka does not know: refused, and not shown.
    custom = _topology(make_topology, kafka, {"my.api.token": f"{marker}-token"}, create=False)
    refused = _streamer("run", str(custom.source), "--connect-timeout", "2")
    assert refused.returncode == 1, refused.stderr
    assert "my.api.token" in refused.stderr.splitlines()[-1], refused.stderr
    outputs["run custom key"] = refused.stdout + refused.stderr

    leaks = [name for name, text in outputs.items() if marker in text]
    assert leaks == [], {name: outputs[name][:2000] for name in leaks}


def _get(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return str(resp.read().decode())
    except urllib.error.HTTPError as err:
        return str(err.read().decode())


def _served(port: int) -> float:
    try:
        text = _get(port, "/metrics")
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("streamer_events_consumed_total "):
            return float(line.split()[1])
    return 0.0
