"""`streamer run` as users run it: SIGTERM drains, commits and exits 0; a restart resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import TracebackType

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
READY = "ready for signals; connecting to Kafka"
"""Logged (INFO) by `streamer run` once its SIGTERM/SIGINT handlers are installed."""


class _Run:
    """`streamer run` in a subprocess whose stderr lines are collected as they come; killed
    on leaving the `with` block if it is still running."""

    def __init__(self, path: Path | None, *options: str) -> None:
        assert path is not None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", str(path), "--log-level", "info", *options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def __enter__(self) -> _Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, text: str, timeout_s: float = 60) -> None:
        """Block until `text` is on stderr; fail if the process exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.lines):
            assert self.running(), f"exited before logging {text!r}: {self.stderr}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout_s} s: {self.stderr}"
            time.sleep(0.02)

    def exit_code(self, timeout_s: float = 90) -> int:
        """Wait for the process to end; negative: the signal that ended it."""
        code = self.proc.wait(timeout_s)
        self._reader.join(10)
        return code

    def sigterm(self) -> str:
        """SIGTERM; expect a drained exit 0 without a traceback; returns stderr."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.exit_code() == 0, self.stderr
        assert "Traceback" not in self.stderr
        return self.stderr


def _handles(pid: int, signum: int) -> bool:
    """Whether the process catches `signum` (Linux /proc; False where there is none)."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return False
    (mask,) = [line.split()[1] for line in status.read_text().splitlines() if "SigCgt" in line]
    return bool(int(mask, 16) >> (signum - 1) & 1)


def _committed(kafka: str, topology: Topology) -> int:
    offsets = committed_offsets(kafka, topology.group_id, topology.input.topic, PARTITIONS)
    return sum(max(o, 0) for o in offsets.values())


def _wait_for_commits(kafka: str, topology: Topology, run: _Run, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while _committed(kafka, topology) < n:
        assert run.running(), run.stderr
        assert time.monotonic() < deadline, f"fewer than {n} events committed in {timeout_s} s"
        time.sleep(0.1)


def test_sigterm_mid_stream_then_restart_loses_nothing(
    make_topology: TopologyFactory, kafka: str
) -> None:
    topology = make_topology(
        partitions=PARTITIONS, batching={"max_batch_size": 128, "max_wait_ms": 10}
    )
    events = generate_transactions(N, seed=41)
    produce(kafka, topology.input.topic, keyed_transactions(events))

    with _Run(topology.source) as first:
        _wait_for_commits(kafka, topology, first, 2000, 120)  # mid-stream: most not served yet
        summary = first.sigterm()
    done_first = _committed(kafka, topology)
    assert 0 < done_first < N, "SIGTERM must land mid-stream for this test to mean anything"
    assert f"{done_first} consumed" in summary  # everything consumed was committed

    with _Run(topology.source) as second:
        _wait_for_commits(kafka, topology, second, N, 180)
        second.sigterm()

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
    with _Run(path, "--connect-timeout", "120") as run:
        run.wait_for(READY)  # imports and model loading are done; the connect wait begins
        signalled = time.monotonic()
        run.sigterm()
    # The connect wait notices the stop within about a second; 120 s would mean it did not.
    assert time.monotonic() - signalled < 15


def test_a_second_sigterm_skips_a_drain_that_cannot_finish(
    make_topology: TopologyFactory, kafka: str, kafka_broker: LocalKafka
) -> None:
    topology = make_topology(partitions=1)
    produce(kafka, topology.input.topic, [(b"k", b"{not avro")])
    broker_pid = running_pid(kafka_broker)
    assert broker_pid is not None
    with _Run(topology.source) as run:
        _wait_for_commits(kafka, topology, run, 1, 60)  # joined, dead-lettered and committed
        os.kill(broker_pid, signal.SIGSTOP)  # a hung broker: the drain's commit and close block
        try:
            run.proc.send_signal(signal.SIGTERM)
            run.wait_for("SIGTERM: draining")
            deadline = time.monotonic() + 10
            while _handles(run.proc.pid, signal.SIGTERM):  # the handler gives SIGTERM back
                assert time.monotonic() < deadline, "SIGTERM is still handled after the first"
                time.sleep(0.01)
            with pytest.raises(subprocess.TimeoutExpired):
                run.proc.wait(1.0)  # the drain is stuck on the hung broker
            run.proc.send_signal(signal.SIGTERM)
            code = run.exit_code(30)
        finally:
            os.kill(broker_pid, signal.SIGCONT)
    assert code == -signal.SIGTERM  # ended by the signal itself, not by a drain
