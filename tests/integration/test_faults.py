"""Nothing lost, nothing doubled: agents killed with SIGKILL while events flow, under both
guarantees, on a real broker. A short version runs in `make test`; STREAMER_SLOW=1 runs the
long one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer

from streamer.config import Topology
from streamer.testing import committed_offsets, consume, end_offsets
from tests.conftest import TopologyFactory
from tests.integration.test_exactly_once import with_garbage

pytestmark = pytest.mark.integration

FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1500}
"""A killed member leaves the group after 6 s (the broker's minimum) instead of 45 s."""


class Agents:
    """`streamer run` processes in one group, each with a stable instance id (so under
    exactly_once a restarted one fences its predecessor's transaction at once)."""

    def __init__(self, topology: Topology, count: int, logs: Path) -> None:
        self.topology, self.logs = topology, logs
        self.procs: list[subprocess.Popen[bytes]] = [self._start(i) for i in range(count)]

    def _start(self, slot: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, "STREAMER_INSTANCE_ID": f"agent-{slot}"}
        log = (self.logs / f"agent-{slot}.log").open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", str(self.topology.source)],
            stderr=log,
            stdout=subprocess.DEVNULL,
            env=env,
        )

    def kill_and_restart(self, slot: int) -> None:
        self.procs[slot].send_signal(signal.SIGKILL)
        self.procs[slot].wait(30)
        self.procs[slot] = self._start(slot)

    def join(self) -> None:
        """One more member."""
        self.procs.append(self._start(len(self.procs)))

    def leave(self, slot: int) -> int:
        """A graceful leave (SIGTERM): drains, commits, hands its partitions over."""
        self.procs[slot].send_signal(signal.SIGTERM)
        return self.procs[slot].wait(120)

    def stop(self) -> list[int]:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        return [p.wait(120) for p in self.procs]


def feed(
    bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes | None]], rate: float
) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
    )
    began = time.monotonic()
    for i, (key, value) in enumerate(items):
        producer.produce(topic, value, key)
        producer.poll(max(i / rate - (time.monotonic() - began), 0.0))
    assert producer.flush(60) == 0


def run_with_kills(
    make_topology: TopologyFactory,
    kafka: str,
    tmp_path: Path,
    guarantee: str,
    events: int,
    kills: int,
    seed: int,
) -> tuple[Counter[str], set[str], int]:
    """Serve `events` (1% garbage) with two agents over 4 partitions while `kills` random
    SIGKILLs hit them; returns (times each id was served or dead-lettered, ids sent, kills)."""
    topology = make_topology(
        partitions=4,
        guarantee=guarantee,
        batching={"max_batch_size": 256, "max_wait_ms": 20},
        kafka=lambda _: {"bootstrap_servers": kafka, "config": FAST_GROUP},
    )
    items = with_garbage(events, seed)
    sent = {k.decode() for k, _ in items if k}
    rng = random.Random(seed)
    agents = Agents(topology, 2, tmp_path)
    producer = threading.Thread(target=feed, args=(kafka, topology.input.topic, items, 2500.0))
    try:
        time.sleep(3)  # both members join before events flow
        producer.start()
        span = events / 2500.0
        for _ in range(kills):
            time.sleep(rng.uniform(0.3, 1.5) * span / kills)
            agents.kill_and_restart(rng.randrange(2))
        producer.join(300)
        seen = _disposed(kafka, topology, len(sent))
    finally:
        codes = agents.stop()
    assert codes == [0, 0], [(tmp_path / f"agent-{i}.log").read_text()[-2000:] for i in (0, 1)]
    return seen, sent, kills


def _caught_up(kafka: str, topology: Topology, partitions: int) -> bool:
    """Whether the group has committed every input offset."""
    ends = end_offsets(kafka, topology.input.topic, partitions)
    return committed_offsets(kafka, topology.group_id, topology.input.topic, partitions) == ends


def _disposed(kafka: str, topology: Topology, expected: int) -> Counter[str]:
    """How often each input id appears in outputs and dead letters (read_committed), once
    the group has committed every input offset."""
    deadline = time.monotonic() + 240
    while not _caught_up(kafka, topology, 4):
        assert time.monotonic() < deadline, "the agents did not commit every input offset"
        time.sleep(1)
    records = consume(
        kafka, [topology.output.topic, topology.dead_letter.topic], expected, timeout_s=120
    )
    seen: Counter[str] = Counter()
    for r in records:
        if "streamer.error" in r.headers:
            seen[(r.key or b"").decode()] += 1
        else:
            seen[json.loads(r.value or b"")["id"]] += 1
    return seen


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
@pytest.mark.parametrize(
    "events,kills",
    [
        pytest.param(15_000, 3, id="short"),
        pytest.param(50_000, 8, id="long", marks=pytest.mark.slow),
    ],
)
def test_agents_killed_with_sigkill_lose_nothing(
    make_topology: TopologyFactory,
    kafka: str,
    tmp_path: Path,
    guarantee: str,
    events: int,
    kills: int,
) -> None:
    """exactly_once: every event once for a read_committed reader; at_least_once: every
    event at least once."""
    seen, sent, killed = run_with_kills(
        make_topology, kafka, tmp_path, guarantee, events, kills, seed=41
    )
    missing = sent - set(seen)
    doubled = sum(n - 1 for n in seen.values())
    print(f"{guarantee}: {len(sent)} sent, {killed} kills, {len(missing)} lost, {doubled} twice")
    assert not missing
    if guarantee == "exactly_once":
        assert doubled == 0
    else:
        # A kill repeats what was produced but not committed: the in-flight batches
        # (4 x 256) and what the last asynchronous commit had not confirmed.
        assert doubled <= killed * 4 * 256 * 2


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_a_member_joining_and_one_leaving_mid_stream_lose_and_repeat_nothing(
    make_topology: TopologyFactory, kafka: str, tmp_path: Path, guarantee: str
) -> None:
    events = 15_000
    topology = make_topology(
        partitions=6,
        guarantee=guarantee,
        batching={"max_batch_size": 256, "max_wait_ms": 20},
        kafka=lambda _: {"bootstrap_servers": kafka, "config": FAST_GROUP},
    )
    items = with_garbage(events, seed=47)
    sent = {k.decode() for k, _ in items if k}
    agents = Agents(topology, 2, tmp_path)
    producer = threading.Thread(target=feed, args=(kafka, topology.input.topic, items, 2500.0))
    try:
        time.sleep(3)
        producer.start()
        time.sleep(2)
        agents.join()  # a third member: partitions move to it mid-stream
        time.sleep(2.5)
        assert agents.leave(0) == 0  # and one leaves: its partitions move again
        producer.join(300)
        seen = _disposed(kafka, topology, len(sent))
    finally:
        codes = agents.stop()
    assert codes == [0, 0, 0]
    missing = sent - set(seen)
    doubled = sum(n - 1 for n in seen.values())
    print(f"{guarantee} rebalances: {len(sent)} sent, {len(missing)} lost, {doubled} repeated")
    assert not missing and doubled == 0
