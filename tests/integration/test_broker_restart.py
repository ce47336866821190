"""A broker restart mid-stream: `streamer run` resumes, commits to the end and loses nothing.

The broker here is this module's own (its own port and data directory), because the test
stops it: gracefully, by SIGKILL, or frozen with SIGSTOP, for 10-30 s while the agent has
batches in flight, then starts it again on the same data directory.

Failures this guards against, all seen after a restart:
- librdkafka (2.10+) drops every broker a Metadata answer leaves out, and a broker in
  controlled shutdown can answer with none: a client that keeps that answer has nothing to
  reconnect to (confluentinc/librdkafka#5301). Its producer never delivers again, its consumer
  never finds the coordinator (SESSTMOUT, then silence). The agent must notice and recreate
  them. The topology asks for metadata every 100 ms so the race is hit more often.
- the loop waited for acknowledgements without serving the consumer, so a group session lost
  meanwhile was not rejoined (librdkafka waits for the application to serve the revoke);
- an async commit that failed while the coordinator was away was never made again once the
  input went idle, so the committed offset (and the lag) froze short of the end.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamer.config import Topology, load_topology
from streamer.demo.data import generate_transactions
from streamer.kafka.admin import create_topics
from streamer.kafka.local import LocalKafka, free_port_pair, running_pid, start, stop
from streamer.testing import committed_offsets, consume, produce, unique
from tests.conftest import SCHEMAS, keyed_transactions

pytestmark = pytest.mark.integration

SETTLE_S = 120.0
"""How long after the broker is back the committed offsets must reach the end."""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A broker for this module alone: the tests stop and restart it."""
    kafka = LocalKafka(port=free_port_pair(), data_dir=tmp_path_factory.mktemp("restart-kafka"))
    start(kafka)
    try:
        yield kafka
    finally:
        pid = running_pid(kafka)
        if pid is not None:  # a failed SIGSTOP cycle must not leave it frozen
            os.kill(pid, signal.SIGCONT)
        stop(kafka)


@dataclass(frozen=True)
class Outage:
    mode: str  # graceful | kill | freeze
    seconds: float
    during: bool  # events keep being produced while the broker is away
    guarantee: str = "at_least_once"


def _topology(
    broker: LocalKafka, models: dict[str, Path], directory: Path, parts: int, guarantee: str
) -> Topology:
    name = unique("restart")
    spec: dict[str, Any] = {
        "name": name,
        "kafka": {
            "bootstrap_servers": broker.bootstrap,
            "config": {"topic.metadata.refresh.interval.ms": 100},
        },
        "input": {
            "topic": f"{name}-in",
            "format": "avro",
            "schema": str(SCHEMAS / "transaction.avsc"),
        },
        "features": ["amount", "age_days", "hour", "merchant_risk"],
        "batching": {"max_batch_size": 256, "max_wait_ms": 20},
        "variants": [{"name": "champion", "model": str(models["fraud_v2"]), "weight": 1.0}],
        "output": {"topic": f"{name}-out", "format": "json"},
        "lake": {"topic": f"{name}-lake", "format": "json"},
        "dead_letter": {"topic": f"{name}-dlq"},
        "metrics": {"port": None},
        "topics": {"partitions": parts},
        "guarantee": guarantee,
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    topology = load_topology(path)
    create_topics(topology)
    return topology


def _committed(broker: LocalKafka, topology: Topology, parts: int) -> int:
    offsets = committed_offsets(broker.bootstrap, topology.group_id, topology.input.topic, parts)
    return sum(max(o, 0) for o in offsets.values())


def _take_down(broker: LocalKafka, outage: Outage) -> None:
    """Stop the broker for `outage.seconds`, then start it on the same data directory."""
    pid = running_pid(broker)
    assert pid is not None
    began = time.monotonic()
    if outage.mode == "graceful":
        stop(broker)
    elif outage.mode == "kill":
        os.kill(pid, signal.SIGKILL)
        stop(broker)  # reaps it and clears the pid file
    else:
        os.kill(pid, signal.SIGSTOP)
    time.sleep(max(0.0, outage.seconds - (time.monotonic() - began)))
    if outage.mode == "freeze":
        os.kill(pid, signal.SIGCONT)
    else:
        start(broker)


def _restart_cycle(
    broker: LocalKafka, models: dict[str, Path], directory: Path, outage: Outage, seed: int
) -> dict[str, Any]:
    """One agent, one outage mid-stream; returns the counts (asserted by the caller)."""
    rng = random.Random(seed)
    parts = rng.randint(3, 6)
    topology = _topology(broker, models, directory, parts, outage.guarantee)
    events = generate_transactions(20_000, seed=seed)
    before, after = keyed_transactions(events[:16_000]), keyed_transactions(events[16_000:])
    produce(broker.bootstrap, topology.input.topic, before)

    assert topology.source is not None
    log = (directory / f"{topology.name}.log").open("w")
    agent = subprocess.Popen(
        [sys.executable, "-m", "streamer", "run", str(topology.source), "--log-level", "info"],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while _committed(broker, topology, parts) < 1000:  # mid-stream, batches in flight
            assert agent.poll() is None, "the agent exited before the outage"
            assert time.monotonic() < deadline, "the agent served nothing within 60 s"
            time.sleep(0.05)

        if outage.during:  # events flow while the broker is away: they arrive after it
            feeder = subprocess.Popen(
                [sys.executable, "-c", _FEED, broker.bootstrap, topology.input.topic],
                stdin=subprocess.PIPE,
            )
            assert feeder.stdin is not None
            feeder.stdin.write(
                json.dumps([[(k or b"").decode(), (v or b"").hex()] for k, v in after]).encode()
            )
            feeder.stdin.close()
        _take_down(broker, outage)
        if outage.during:
            assert feeder.wait(120) == 0, "the test's producer did not deliver"
        else:
            produce(broker.bootstrap, topology.input.topic, after)

        back = time.monotonic()
        total = len(events)
        done = _committed(broker, topology, parts)
        while done < total and time.monotonic() - back < SETTLE_S:
            assert agent.poll() is None, "the agent exited after the restart"
            time.sleep(1.0)
            done = _committed(broker, topology, parts)
        settle_s = time.monotonic() - back
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(90)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(10)
        log.close()

    served = consume(broker.bootstrap, topology.output.topic, total, timeout_s=60)
    served_counts = Counter(str(json.loads(r.value or b"")["id"]) for r in served)
    served_ids = set(served_counts)
    dead = consume(
        broker.bootstrap, topology.dead_letter.topic, total - len(served_ids), timeout_s=10
    )
    ids = {str(e["id"]) for e in events}
    got = served_ids | {(r.key or b"").decode() for r in dead}
    return {
        "outage": outage,
        "partitions": parts,
        "sent": total,
        "committed": done,
        "settle_s": round(settle_s, 1),
        "outputs": len(served),
        "dead_letters": len(dead),
        "lost": len(ids - got),
        "doubled": sum(served_counts.values()) - len(served_counts),
        "rc": agent.returncode,
        "log": log.name,
    }


_FEED = """
import json, sys
from streamer.testing import produce
items = [(k.encode(), bytes.fromhex(v)) for k, v in json.load(sys.stdin)]
# Started while the broker is up, keeps producing through the outage: message.timeout.ms
# (5 min) outlasts it, so every event is delivered once the broker is back.
produce(sys.argv[1], sys.argv[2], items)
"""


def _check(results: list[dict[str, Any]]) -> None:
    stalls = [r for r in results if r["committed"] < r["sent"]]
    lost = [r for r in results if r["lost"]]
    failed = [r for r in results if r["rc"] != 0]
    doubled = [r for r in results if r["doubled"] and r["outage"].guarantee == "exactly_once"]
    summary = "\n".join(f"{r}" for r in results)
    print(summary)
    assert not doubled, f"exactly_once served events twice:\n{summary}"
    assert not stalls, f"{len(stalls)}/{len(results)} runs did not commit to the end:\n{summary}"
    assert not lost, f"events lost:\n{summary}"
    assert not failed, f"the agent did not exit 0 on SIGTERM:\n{summary}"


@pytest.mark.timeout(900)  # a cycle that stalls takes up to ~6 min before it reports
def test_agent_resumes_after_broker_restarts(
    broker: LocalKafka, demo_models: dict[str, Path], tmp_path: Path
) -> None:
    """The short variant: a graceful restart, then a SIGKILL with events flowing, under
    each guarantee."""
    outages = [
        Outage("graceful", 10.0, during=False),
        Outage("kill", 10.0, during=True, guarantee="exactly_once"),
    ]
    _check(
        [_restart_cycle(broker, demo_models, tmp_path, o, 100 + i) for i, o in enumerate(outages)]
    )


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_agent_resumes_after_many_broker_restarts(
    broker: LocalKafka, demo_models: dict[str, Path], tmp_path: Path
) -> None:
    """The soak: twelve outages of 10-30 s, every mode, with and without events flowing,
    and a freeze longer than the group session timeout (45 s) so the session is lost while
    the agent waits for its in-flight batches."""
    rng = random.Random(7)
    modes = ["graceful", "kill", "graceful", "freeze"] * 3  # graceful stops hit librdkafka#5301
    guarantees = ["at_least_once", "at_least_once", "exactly_once"]
    outages = [
        Outage(mode, rng.uniform(10, 30), during=bool(i % 2), guarantee=guarantees[i % 3])
        for i, mode in enumerate(modes)
    ] + [
        Outage("freeze", 50.0, during=False),
        Outage("freeze", 50.0, during=False, guarantee="exactly_once"),
    ]
    _check(
        [_restart_cycle(broker, demo_models, tmp_path, o, 200 + i) for i, o in enumerate(outages)]
    )
