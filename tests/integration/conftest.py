"""Helpers and fixtures of the integration tests: model directories, `streamer control`
through the CLI, waiting for conditions, and a steady event feed."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from streamer.cli import app
from streamer.config import Topology
from streamer.demo.data import generate_transactions
from streamer.repository import MODEL_FILE
from tests.conftest import TRANSACTION

runner = CliRunner()


def add_version(directory: Path, version: int, source: Path | bytes) -> Path:
    """Drop `source` (a model file, or raw bytes) in as `directory/version/model.onnx` the
    way a deployment should: written beside, then renamed into place."""
    target = directory / str(version) / MODEL_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    if isinstance(source, Path):
        shutil.copyfile(source, partial)
    else:
        partial.write_bytes(source)
    # Settled: agents skip files modified within the last second (possibly still written).
    settled = time.time() - 5
    os.utime(partial, (settled, settled))
    partial.rename(target)
    return target


def control(topology: Topology, *args: str) -> str:
    """`streamer control TOPOLOGY ARGS...`; its output, asserting exit 0."""
    result = runner.invoke(app, ["control", str(topology.source), *args])
    assert result.exit_code == 0, result.output
    return result.output


def control_fails(topology: Topology, *args: str) -> str:
    """`streamer control` that must exit 1 with one line; that line."""
    result = runner.invoke(app, ["control", str(topology.source), *args])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def values(records: list[Any]) -> list[dict[str, Any]]:
    """The JSON values of consumed records."""
    return [orjson.loads(r.value) for r in records]


class Feed:
    """Produces demo transactions with unique keys at a steady rate until stopped."""

    def __init__(self, bootstrap: str, topic: str, rate: float) -> None:
        self.bootstrap, self.topic, self.rate = bootstrap, topic, rate
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 2})
        began = time.monotonic()
        events = generate_transactions(1000, seed=3)
        while not self._stop.is_set():
            key = f"feed-{self.sent}"
            event = {**events[self.sent % len(events)], "id": key}
            producer.produce(self.topic, TRANSACTION.encode(event), key.encode())
            self.sent += 1
            ahead = self.sent / self.rate - (time.monotonic() - began)
            producer.poll(max(ahead, 0.0))
        assert producer.flush(30) == 0

    def __enter__(self) -> Feed:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(60)
        return self.sent


@pytest.fixture
def models_dir(tmp_path: Path, demo_models: dict[str, Path]) -> Path:
    """A model directory with version 1 (fraud_v2) and version 2 (fraud_v3)."""
    directory = tmp_path / "challenger"
    add_version(directory, 1, demo_models["fraud_v2"])
    add_version(directory, 2, demo_models["fraud_v3"])
    return directory
