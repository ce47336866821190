"""When the output cannot keep up, the agent stops consuming (memory stays flat) instead of
buffering its input; a dead-letter topic that cannot park an event stops it without
committing past that event. Both on the real broker.

"Cannot keep up": a produce quota of 1 KB/s on the agent's client id, so the broker
throttles every write of the agent, as an unavailable or overloaded leader would."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from streamer.config import Topology
from streamer.demo.data import generate_transactions
from streamer.kafka.admin import create_topics
from streamer.kafka.clients import make_admin
from streamer.kafka.local import ensure_jars
from streamer.testing import committed_offsets, consume, end_offsets, produce
from tests.conftest import TopologyFactory, keyed_transactions
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

CLIENT_ID = "agent-under-test"
QUOTA_TOOL = Path(__file__).parent / "java" / "ClientQuota.java"


def produce_quota(bootstrap: str, bytes_per_s: int | None) -> None:
    """Throttle (or stop throttling) what CLIENT_ID may produce per second."""
    java = shutil.which("java")
    assert java is not None
    subprocess.run(
        [
            java,
            "-cp",
            f"{ensure_jars()}/*",
            str(QUOTA_TOOL),
            bootstrap,
            CLIENT_ID,
            "none" if bytes_per_s is None else str(bytes_per_s),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def start_agent(topology: Topology, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamer", "run", str(topology.source), "--log-level", "info"],
        stderr=log.open("ab"),
        stdout=subprocess.DEVNULL,
    )


def committed(kafka: str, topology: Topology, partitions: int) -> int:
    offsets = committed_offsets(kafka, topology.group_id, topology.input.topic, partitions)
    return sum(max(o, 0) for o in offsets.values())


def test_an_output_that_cannot_keep_up_stops_consumption_and_memory_stays_flat(
    make_topology: TopologyFactory, kafka: str, tmp_path: Path
) -> None:
    n = 50_000
    topology = make_topology(
        partitions=3,
        batching={"max_batch_size": 512, "max_wait_ms": 5},
        kafka=lambda _: {"bootstrap_servers": kafka, "config": {"client.id": CLIENT_ID}},
    )
    produce(kafka, topology.input.topic, keyed_transactions(generate_transactions(n, seed=51)))
    produce_quota(kafka, 1024)
    agent = start_agent(topology, tmp_path / "agent.log")
    samples: list[float] = []
    try:
        process = psutil.Process(agent.pid)
        for _ in range(40):  # 20 s with every write of the agent throttled to 1 KB/s
            time.sleep(0.5)
            samples.append(process.memory_info().rss / 2**20)
        blocked_at = committed(kafka, topology, 3)
        produce_quota(kafka, None)
        wait_for(lambda: committed(kafka, topology, 3) == n, "every event served", timeout_s=180)
    finally:
        produce_quota(kafka, None)
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(120)
    settled = samples[len(samples) // 4 :]  # after start-up (models, clients)
    growth = max(settled) - settled[0]
    print(
        f"throttled: {blocked_at} of {n} committed in 20 s; RSS {settled[0]:.0f} -> "
        f"{max(settled):.0f} MB (+{growth:.1f} MB)"
    )
    assert blocked_at < n // 10, "consumption did not stop while the output was throttled"
    assert growth < 30, f"RSS grew by {growth:.1f} MB while the output was throttled"
    assert code == 0
    ids = {json.loads(r.value or b"")["id"] for r in consume(kafka, topology.output.topic, n)}
    assert len(ids) == n


def test_a_dead_letter_topic_that_cannot_park_an_event_stops_the_agent_before_it(
    make_topology: TopologyFactory, kafka: str, tmp_path: Path
) -> None:
    topology = make_topology(
        partitions=1,
        kafka=lambda _: {
            "bootstrap_servers": kafka,
            # A deleted topic must stay deleted (not come back empty on the first write),
            # and the agent must not wait minutes for it.
            "config": {"allow.auto.create.topics": False, "message.timeout.ms": 5000},
        },
    )
    good = keyed_transactions(generate_transactions(200, seed=53))
    produce(kafka, topology.input.topic, good[:100])
    log = tmp_path / "agent.log"
    agent = start_agent(topology, log)
    wait_for(lambda: committed(kafka, topology, 1) == 100, "the first 100 served")
    admin = make_admin(topology.kafka)
    admin.delete_topics([topology.dead_letter.topic])[topology.dead_letter.topic].result(30)
    poison: list[tuple[bytes | None, bytes | None]] = [(b"poison", b"not avro at all")]
    produce(kafka, topology.input.topic, poison + good[100:])
    assert agent.wait(120) == 1
    errors = [line for line in log.read_text().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and topology.dead_letter.topic in errors[0], errors
    assert "Traceback" not in log.read_text()
    assert committed(kafka, topology, 1) == 100  # not past the event it could not park
    create_topics(topology)  # the dead-letter topic is back: a restart parks and serves it
    agent = start_agent(topology, log)
    try:
        wait_for(lambda: committed(kafka, topology, 1) == 201, "everything served", timeout_s=90)
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(60) == 0
    (dead,) = consume(kafka, topology.dead_letter.topic, 1)
    assert dead.key == b"poison" and dead.headers["streamer.error"] == b"undecodable"
    assert end_offsets(kafka, topology.input.topic, 1) == {0: 201}
