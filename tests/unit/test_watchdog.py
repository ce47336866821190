"""The client watchdog: clients cut off from a cluster that answers are given up on."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from confluent_kafka import Consumer, Producer

import streamer.agent as agent_module
from streamer.agent import STUCK_CHECK_S, STUCK_CHECKS, _ClientWatchdog
from streamer.commits import AtLeastOnce, ClientsLost
from streamer.config import Topology, load_topology
from tests.onnx_models import write_tiny_model


class Committer:
    def __init__(self) -> None:
        self.in_flight = 1
        self.assigned = {("in", 0)}
        self.progress_at = 0.0


@pytest.fixture
def topology(tmp_path: Path) -> Topology:
    write_tiny_model(tmp_path / "m.onnx")
    spec = {
        "name": "t",
        "input": {"topic": "in"},
        "features": ["a", "b", "c", "d"],
        "variants": [{"name": "m", "model": "m.onnx"}],
        "output": {"topic": "out"},
        "lake": {"topic": "lake"},
        "dead_letter": {"topic": "dlq"},
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(spec))
    return load_topology(tmp_path / "t.yaml")


def watchdog(
    topology: Topology, monkeypatch: pytest.MonkeyPatch, reachable: dict[str, bool]
) -> tuple[_ClientWatchdog, Committer, list[float]]:
    clock = [1000.0]
    consumer, producer, fresh = object(), object(), object()
    names = {id(consumer): "consumer", id(producer): "producer", id(fresh): "fresh"}
    monkeypatch.setattr(agent_module, "make_admin", lambda *_a, **_k: fresh)
    monkeypatch.setattr(
        agent_module, "reaches_cluster", lambda client, _topic: reachable[names[id(client)]]
    )
    committer = Committer()
    dog = _ClientWatchdog(
        topology,
        cast(AtLeastOnce, committer),
        cast(Consumer, consumer),
        cast(Producer, cast(Any, producer)),
        clock=lambda: clock[0],
    )
    return dog, committer, clock


def test_clients_cut_off_from_an_answering_cluster_are_given_up_after_two_checks(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    dog, _, clock = watchdog(
        topology, monkeypatch, {"fresh": True, "consumer": True, "producer": False}
    )
    dog.check()  # progress was long ago, but the first check only counts
    assert dog.failed == 1
    clock[0] += STUCK_CHECK_S / 2
    dog.check()  # too soon for another check
    assert dog.failed == 1
    clock[0] += STUCK_CHECK_S
    assert STUCK_CHECKS == 2
    with pytest.raises(ClientsLost, match="the producer lost every broker"):
        dog.check()


def test_nothing_is_given_up_while_the_cluster_itself_is_away(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    dog, _, clock = watchdog(
        topology, monkeypatch, {"fresh": False, "consumer": False, "producer": False}
    )
    for _ in range(5):
        dog.check()
        clock[0] += STUCK_CHECK_S
    assert dog.failed == 0


def test_an_agent_making_progress_is_not_checked(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    dog, committer, clock = watchdog(
        topology, monkeypatch, {"fresh": True, "consumer": False, "producer": False}
    )
    committer.progress_at = clock[0] - 1.0
    dog.check()
    committer.in_flight, committer.progress_at = 0, 0.0  # idle and assigned: nothing to wait for
    dog.check()
    assert dog.failed == 0
