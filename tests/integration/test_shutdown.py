"""`streamer run` as users run it: SIGTERM drains, commits and exits 0; a restart resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from streamer.config import Topology
from streamer.demo.data import generate_transactions
from streamer.kafka.local import LocalKafka, running_pid
from streamer.testing import committed_offsets, consume, produce
from tests.conftest import TopologyFactory, keyed_transactions

pytestmark = pytest.mark.integration

N = 20_000
PARTITIONS = 3


def _start(topology: Topology) -> subprocess.Popen[str]:
    assert topology.source is not None
    return subprocess.Popen(
        [sys.executable, "-m", "streamer", "run", str(topology.source), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _committed(kafka: str, topology: Topology) -> int:
    offsets = committed_offsets(kafka, topology.group_id, topology.input.topic, PARTITIONS)
    return sum(max(o, 0) for o in offsets.values())


def _sigterm(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return err


def test_sigterm_mid_stream_then_restart_loses_nothing(
    make_topology: TopologyFactory, kafka: str, tmp_path: Path
) -> None:
    topology = make_topology(
        partitions=PARTITIONS, batching={"max_batch_size": 128, "max_wait_ms": 10}
    )
    events = generate_transactions(N, seed=41)
    produce(kafka, topology.input.topic, keyed_transactions(events))

    first = _start(topology)
    deadline = time.monotonic() + 120
    while _committed(kafka, topology) < 2000:  # mid-stream: some served, most not yet
        assert first.poll() is None, first.stderr.read() if first.stderr else ""
        assert time.monotonic() < deadline, "the agent served nothing within 120 s"
        time.sleep(0.1)
    summary = _sigterm(first)
    done_first = _committed(kafka, topology)
    assert 0 < done_first < N, "SIGTERM must land mid-stream for this test to mean anything"
    assert f"{done_first} consumed" in summary  # everything consumed was committed

    second = _start(topology)
    deadline = time.monotonic() + 180
    while _committed(kafka, topology) < N:
        assert second.poll() is None, second.stderr.read() if second.stderr else ""
        assert time.monotonic() < deadline, "the restarted agent did not finish"
        time.sleep(0.2)
    _sigterm(second)

    outputs = consume(kafka, topology.output.topic, N)
    ids = Counter(json.loads(r.value or b"")["id"] for r in outputs)
    assert set(ids) == {e["id"] for e in events}, "nothing lost"
    # A drained shutdown commits all it served, so the restart repeats nothing at all.
    assert [i for i, c in ids.items() if c > 1] == []


def test_sigterm_while_waiting_for_an_unreachable_broker_exits_promptly(
    make_topology: TopologyFactory, tmp_path: Path
) -> None:
    topology = make_topology(create=False)
    assert topology.source is not None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nobody = sock.getsockname()[1]
    spec = yaml.safe_load(topology.source.read_text())
    spec["kafka"]["bootstrap_servers"] = f"127.0.0.1:{nobody}"
    path = tmp_path / "unreachable.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamer",
            "run",
            str(path),
            "--connect-timeout",
            "120",
            "--log-level",
            "critical",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)  # let it get into the connect wait (imports and model loading come first)
    assert proc.poll() is None
    _sigterm(proc)  # exit 0 well before the 120 s connect timeout (communicate waits 90 s)


def test_a_second_sigterm_skips_a_drain_that_cannot_finish(
    make_topology: TopologyFactory, kafka: str, kafka_broker: LocalKafka
) -> None:
    topology = make_topology(partitions=1)
    produce(kafka, topology.input.topic, [(b"k", b"{not avro")])
    proc = _start(topology)
    deadline = time.monotonic() + 60
    while _committed(kafka, topology) < 1:  # joined, served (a dead letter) and committed
        assert time.monotonic() < deadline, "the agent did not serve the event"
        time.sleep(0.1)
    broker_pid = running_pid(kafka_broker)
    assert broker_pid is not None
    os.kill(broker_pid, signal.SIGSTOP)  # a hung broker: the drain's commit and close block
    try:
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None, "the drain should be waiting for the hung broker"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        os.kill(broker_pid, signal.SIGCONT)
    assert proc.returncode == -signal.SIGTERM  # ended by the signal itself, not a drain
