"""Live control on a real broker: weights, feature flags, rollbacks, pins and hot reloads
reach running agents through the control topic and model directories, losing nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streamer.config import Topology
from streamer.control.commands import read_state
from streamer.control.topic import publish, read_all
from streamer.demo.data import generate_transactions
from streamer.testing import RunningAgent, consume, produce
from tests.conftest import TopologyFactory, keyed_transactions
from tests.integration.conftest import (
    Feed,
    add_version,
    control,
    control_fails,
    values,
    wait_for,
)
from tests.onnx_models import write_slow_model, write_tiny_model

pytestmark = pytest.mark.integration


def with_control(name: str) -> dict[str, str]:
    return {"control_topic": f"{name}-control"}


def test_weights_split_keys_stickily_and_shadows_only_reach_the_lake(
    make_topology: TopologyFactory, kafka: str, demo_models: dict[str, Path]
) -> None:
    keys = 10_000
    topology = make_topology(
        variants=[
            {"name": "a", "model": str(demo_models["fraud_v1"]), "weight": 0.7},
            {"name": "b", "model": str(demo_models["fraud_v2"]), "weight": 0.3},
            {"name": "s", "model": str(demo_models["fraud_v3"]), "shadow": True},
            {
                "name": "half",
                "model": str(demo_models["fraud_v3"]),
                "shadow": True,
                "sample_rate": 0.5,
            },
        ],
        batching={"max_batch_size": 512, "max_wait_ms": 20, "shadow_budget_ms": None},
    )
    events = generate_transactions(2 * keys, seed=5)
    for i, event in enumerate(events):  # every key twice, in two different batches
        event["id"] = f"key-{i % keys}"
    produce(kafka, topology.input.topic, keyed_transactions(events))
    with RunningAgent(topology) as running:
        running.wait_until(len(events))
        stats = running.stop()
    assert stats.served == len(events) and stats.dead_letters == 0
    sampled = int(running.agent.metrics.value("streamer_predictions_total", variant="half"))

    outputs = values(consume(kafka, topology.output.topic, len(events)))
    assert len(outputs) == len(events)
    by_key: dict[str, set[str]] = defaultdict(set)
    for out in outputs:
        by_key[out["id"]].add(out["variant"])
    assert all(len(v) == 1 for v in by_key.values()), "a key met two variants"
    share = Counter(next(iter(v)) for v in by_key.values())
    assert set(share) == {"a", "b"}
    assert abs(share["a"] / keys - 0.7) <= 0.03, share

    lake = values(consume(kafka, topology.lake.topic, 2 * len(events) + sampled))
    assert len(lake) == 2 * len(events) + sampled
    per_variant = Counter(r["variant"] for r in lake)
    assert per_variant["a"] + per_variant["b"] == len(events)
    assert per_variant["s"] == len(events)  # every event, shadowed
    shadowed = Counter(r["id"] for r in lake if r["variant"] == "half")
    assert sum(shadowed.values()) == sampled
    assert set(shadowed.values()) == {2}, "a sampled key was shadowed in one batch only"
    assert abs(len(shadowed) / keys - 0.5) <= 0.03
    assert all(r["shadow"] == (r["variant"] in ("s", "half")) for r in lake)
    for r in lake:
        expected = 1.0 if r["shadow"] else {"a": 0.7, "b": 0.3}[r["variant"]]
        assert r["propensity"] == pytest.approx(expected)


def _weights(running: RunningAgent) -> dict[str, float]:
    return dict(running.agent.variants.latest.router.weights)


def _count(running: RunningAgent, result: str) -> int:
    return int(running.agent.metrics.value("streamer_control_records_total", result=result))


def test_invalid_control_records_are_rejected_and_the_last_good_one_stays(
    make_topology: TopologyFactory, kafka: str, demo_models: dict[str, Path], models_dir: Path
) -> None:
    topology = make_topology(
        variants=[
            {"name": "a", "model": str(demo_models["fraud_v1"]), "weight": 0.5},
            {"name": "b", "model": str(models_dir), "weight": 0.5},
            {"name": "s", "model": str(demo_models["fraud_v3"]), "shadow": True},
        ],
        routing=with_control,
    )
    topic, key = topology.routing.control_topic, topology.name
    assert topic is not None

    def send(value: dict[str, Any] | bytes) -> None:
        body = value if isinstance(value, bytes) else json.dumps(value).encode()
        publish(topology.kafka, topic, key, body)

    # Already on the topic when the agent starts: in force before its first batch.
    send({"weights": {"a": 0.2, "b": 0.8}, "policy": "manual", "ts": 1, "reason": "start"})
    with RunningAgent(topology) as running:
        wait_for(lambda: _count(running, "applied") == 1, "the record already on the topic")
        assert _weights(running) == pytest.approx({"a": 0.2, "b": 0.8})
        good = {"a": 0.2, "b": 0.8}
        bad: list[dict[str, Any] | bytes] = [
            b"{not json",
            {"weights": {"a": 0.5, "b": 0.4}},  # sums to 0.9
            {"weights": {"a": 1.2, "b": -0.2}},
            {"weights": {"a": 0.5, "c": 0.5}},  # unknown variant
            {"weights": {"a": 0.5, "b": 0.5}, "versions": {"b": "9"}},  # no such version
            {"weights": {"a": 0.5, "b": 0.3, "s": 0.2}},  # a shadow given a weight
            {"weights": {"a": 1.0, "b": 0.0}, "disabled": ["a"]},  # nothing left to serve
        ]
        for n, value in enumerate(bad, start=1):
            send(value)
            wait_for(lambda n=n: _count(running, "rejected") == n, f"rejection {n}")  # type: ignore[misc]
            assert _weights(running) == pytest.approx(good)
        gauge = running.agent.metrics.by_label("streamer_variant_weight", "variant")
        assert gauge == pytest.approx({"a": 0.2, "b": 0.8})

        # routing.strategy static: the controller's weights are ignored, a person's obeyed.
        send({"weights": {"a": 1.0, "b": 0.0}, "source": "controller", "policy": "thompson"})
        wait_for(lambda: _count(running, "ignored") == 1, "the controller's record ignored")
        assert _weights(running) == pytest.approx(good)
        send({"weights": {"a": 0.6, "b": 0.4}, "source": "cli", "future_key": [1, 2]})
        wait_for(lambda: _count(running, "applied") == 2, "a person's record applied")
        assert _weights(running) == pytest.approx({"a": 0.6, "b": 0.4})
        running.stop()


def test_hot_reload_while_events_flow_loses_nothing(
    make_topology: TopologyFactory,
    kafka: str,
    demo_models: dict[str, Path],
    tmp_path: Path,
) -> None:
    directory = tmp_path / "m"
    add_version(directory, 1, demo_models["fraud_v1"])
    topology = make_topology(
        variants=[{"name": "m", "model": str(directory)}],
        models={"poll_interval_s": 0.2},
        routing=with_control,
        batching={"max_batch_size": 128, "max_wait_ms": 10},
    )
    reloads = "streamer_model_reloads_total"
    with RunningAgent(topology) as running, Feed(kafka, topology.input.topic, 1500) as feed:
        metrics = running.agent.metrics

        def serving() -> str:
            return running.agent.variants.latest.models["m"].version

        running.wait_until(500)
        add_version(directory, 2, demo_models["fraud_v2"])
        wait_for(lambda: serving() == "2", "version 2 to serve")
        assert metrics.value(reloads, variant="m", result="applied") == 1
        served_before = running.agent.stats.served
        add_version(directory, 3, b"not an onnx model")
        wait_for(lambda: metrics.value(reloads, result="rejected") == 1, "version 3 rejected")
        narrow = write_tiny_model(tmp_path / "narrow.onnx", outputs=("probabilities",))
        add_version(directory, 4, narrow)
        wait_for(lambda: metrics.value(reloads, result="rejected") == 2, "version 4 rejected")
        time.sleep(0.5)  # several more polls: neither is tried again
        assert metrics.value(reloads, result="rejected") == 2
        assert serving() == "2"
        running.wait_until(served_before + 500)  # still serving, on version 2
        shown = control(topology, "show")
        sent = feed.stop()
        running.wait_until(sent)
        stats = running.stop()

    assert "m: version 2" in shown
    assert "version 3 rejected: " in shown and "not a loadable ONNX model" in shown
    assert "version 4 rejected: " in shown and "has outputs probabilities" in shown
    assert stats.served == sent and stats.dead_letters == 0
    records = consume(kafka, topology.output.topic, sent)
    outputs = values(records)
    ids = Counter(o["id"] for o in outputs)
    assert len(ids) == sent and max(ids.values()) == 1, "lost or repeated events"
    assert {o["model_version"] for o in outputs} == {"1", "2"}
    for partition in {r.partition for r in records}:
        versions = [
            json.loads(r.value or b"")["model_version"]
            for r in sorted(records, key=lambda r: r.offset)
            if r.partition == partition
        ]
        switched = versions.index("2") if "2" in versions else len(versions)
        assert set(versions[:switched]) <= {"1"} and set(versions[switched:]) <= {"2"}
    info = {s.labels["version"] for s in _samples(running, "streamer_model_info")}
    assert info == {"2"}


def _samples(running: RunningAgent, name: str) -> Iterator[Any]:
    for metric in running.agent.metrics.registry.collect():
        yield from (s for s in metric.samples if s.name == name)


def _record_time(topology: Topology, offset: int) -> int:
    assert topology.routing.control_topic is not None
    entries = read_all(topology.kafka, topology.routing.control_topic)
    return next(e.timestamp_ms for e in entries if e.offset == offset)


def _offset(output: str) -> int:
    return int(output.rsplit("(offset ", 1)[1].split()[0])


def test_two_agents_obey_promote_rollback_disable_enable_and_pin(
    make_topology: TopologyFactory, kafka: str, demo_models: dict[str, Path], models_dir: Path
) -> None:
    topology = make_topology(
        partitions=4,
        variants=[
            {"name": "a", "model": str(demo_models["fraud_v1"]), "weight": 0.5},
            {"name": "b", "model": str(models_dir), "weight": 0.5},
        ],
        routing=with_control,
        batching={"max_batch_size": 256, "max_wait_ms": 20},
    )
    logs = [Path(str(topology.source) + f".agent{i}.log") for i in range(2)]
    agents = [
        subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", str(topology.source)],
            stderr=log.open("w"),
            stdout=subprocess.DEVNULL,
        )
        for log in logs
    ]
    switches: list[tuple[str, int]] = []
    try:

        def both_serve() -> bool:
            owned = [a.status["partitions"] for a in read_state(topology).agents if a.live]
            every = sorted(p for partitions in owned for p in partitions)
            return len(owned) == 2 and all(owned) and every == [0, 1, 2, 3]

        # Both members own partitions before events flow: no rebalance repeats any event.
        wait_for(
            both_serve,
            "both agents to own two partitions",
            timeout_s=60,
        )
        with Feed(kafka, topology.input.topic, 800) as feed:
            time.sleep(2)  # both agents serve their partitions
            for command in (["promote", "b"], ["rollback"], ["disable", "a"], ["enable", "a"]):
                out = control(topology, *command)
                switches.append((command[0], _record_time(topology, _offset(out))))
                time.sleep(3)
            out = control(topology, "pin", "b", "1")
            assert "pinned b to version 1" in out
            switches.append(("pin", _record_time(topology, _offset(out))))
            time.sleep(3)
            sent = feed.stop()
        outputs = [
            {**json.loads(r.value or b""), "partition": r.partition}
            for r in consume(kafka, topology.output.topic, sent, timeout_s=120)
        ]
        state = read_state(topology)
    finally:
        for agent in agents:
            agent.terminate()
        codes = [agent.wait(60) for agent in agents]
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]

    ids = Counter(o["id"] for o in outputs)
    assert len(ids) == sent and max(ids.values()) == 1, "lost or repeated events"
    last_offset = _offset(out)
    assert [a.status["control"]["offset"] for a in state.agents if a.live] == [last_offset] * 2

    def served(since: int, until: int) -> list[dict[str, Any]]:
        return [o for o in outputs if since <= o["ts_predicted"] < until]

    ends = [t for _, t in switches[1:]] + [2**62]
    regime: dict[str, Callable[[dict[str, Any]], bool]] = {
        "promote": lambda o: o["variant"] == "b",
        "rollback": lambda o: True,  # 50/50 again: measured by when `a` is back, below
        "disable": lambda o: o["variant"] == "b",
        "enable": lambda o: True,
        "pin": lambda o: o["variant"] == "a" or o["model_version"] == "1",
    }
    delays = {}
    for (step, at), end in zip(switches, ends, strict=True):
        after = served(at, end)
        if step in ("rollback", "enable"):  # every partition (both agents) serves `a` again
            delays[step] = max(
                min(o["ts_predicted"] for o in after if o["partition"] == p and o["variant"] == "a")
                - at
                for p in range(4)
            )
        else:
            delays[step] = max(
                (o["ts_predicted"] - at for o in after if not regime[step](o)), default=0
            )
        settled = served(at + 1500, end)
        assert settled and all(regime[step](o) for o in settled), step
        if step in ("rollback", "enable"):
            shares = Counter(o["variant"] for o in settled)
            assert min(shares.values()) > 0.3 * len(settled), (step, shares)
    print(f"switch delays (control record -> every agent on the new split, ms): {delays}")
    assert max(delays.values()) <= 1500, delays
    before_pin = served(switches[3][1] + 1500, switches[4][1])
    assert {o["model_version"] for o in before_pin if o["variant"] == "b"} == {"2"}


def test_control_requests_the_topology_cannot_take_fail_in_one_line(
    make_topology: TopologyFactory, demo_models: dict[str, Path], models_dir: Path
) -> None:
    topology = make_topology(
        variants=[
            {"name": "a", "model": str(demo_models["fraud_v1"]), "weight": 1.0},
            {"name": "b", "model": str(models_dir), "weight": 0.0},
            {"name": "s", "model": str(demo_models["fraud_v3"]), "shadow": True},
        ],
        routing=with_control,
    )
    assert "no control records" in control(topology, "history")
    assert "rollback: there is no record to roll back" in control_fails(topology, "rollback")
    assert "nope is not a variant; served variants: a, b" in control_fails(
        topology, "promote", "nope"
    )
    assert "s is a shadow" in control_fails(topology, "promote", "s")
    assert "a serves a model file" in control_fails(topology, "pin", "a", "1")
    assert "b has no version 7 (has 1, 2)" in control_fails(topology, "pin", "b", "7")
    assert "'a=x' is not NAME=WEIGHT" in control_fails(topology, "set-weights", "a=x")
    assert "s is a shadow" in control_fails(topology, "set-weights", "a=1", "s=1")
    assert "a is already enabled" in control_fails(topology, "enable", "a")
    assert "no enabled served variant" in control_fails(topology, "disable", "a")

    out = control(topology, "set-weights", "a=3", "b=1")
    assert out.startswith("set-weights: weights a 1 -> 0.75, b 0 -> 0.25 (offset 0 of ")
    assert "pinned b to version 1" in control(topology, "pin", "b", "1")
    assert "disabled s" in control(topology, "disable", "s")
    assert "unpinned b" in control(topology, "unpin", "b")
    assert "enabled s" in control(topology, "enable", "s")
    assert "weights a 0.75 -> 0, b 0.25 -> 1" in control(topology, "promote", "b")
    assert "weights a 0 -> 0.75, b 1 -> 0.25" in control(topology, "rollback")
    history = control(topology, "history").splitlines()
    assert len(history) == 7
    assert history[0].startswith("offset 6 ") and "(in force)" in history[0]
    assert "rollback by" in history[0] and "promote b by" in history[1]
    shown = control(topology, "show")
    assert "in force: offset 6" in shown and "serving weights a 0.75, b 0.25" in shown
    assert "agents: 0 reporting" in shown


def test_control_without_a_control_topic_fails_in_one_line(
    make_topology: TopologyFactory,
) -> None:
    topology = make_topology(create=False)
    assert "routing.control_topic: not set" in control_fails(topology, "show")


def test_a_slow_shadow_is_cut_at_its_budget_and_every_event_is_still_served(
    make_topology: TopologyFactory, kafka: str, demo_models: dict[str, Path], tmp_path: Path
) -> None:
    slow = write_slow_model(tmp_path / "slow.onnx", layers=64)
    n = 3000
    topology = make_topology(
        variants=[
            {"name": "a", "model": str(demo_models["fraud_v2"]), "weight": 1.0},
            {"name": "slow", "model": str(slow), "shadow": True},
        ],
        batching={"max_batch_size": 256, "max_wait_ms": 20, "shadow_budget_ms": 10},
    )
    produce(kafka, topology.input.topic, keyed_transactions(generate_transactions(n, seed=9)))
    with RunningAgent(topology) as running:
        running.wait_until(n)
        stats = running.stop()
    metrics = running.agent.metrics
    scored = int(metrics.value("streamer_predictions_total", variant="slow"))
    skipped = int(metrics.value("streamer_shadow_skipped_total", variant="slow"))
    assert stats.served == n and stats.dead_letters == 0
    assert scored + skipped == n and skipped > 0, (scored, skipped)
    lake = values(consume(kafka, topology.lake.topic, n + scored))
    assert Counter(r["variant"] for r in lake) == Counter({"a": n, "slow": scored})
    assert len(values(consume(kafka, topology.output.topic, n))) == n
