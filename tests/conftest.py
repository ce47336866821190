"""Shared fixtures: one real Kafka broker per test session, the demo models, topologies."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamer.codecs.avro import AvroEncoder
from streamer.config import Topology, load_topology
from streamer.kafka.admin import create_topics
from streamer.kafka.local import LocalKafka, free_port_pair, start, stop
from streamer.testing import unique

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "schemas"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow soak/chaos tests run only with STREAMER_SLOW=1; CI runs the short suite."""
    if os.environ.get("STREAMER_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set STREAMER_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


TopologyFactory = Callable[..., Topology]
KafkaItems = list[tuple[bytes | None, bytes | None]]

TRANSACTION = AvroEncoder(SCHEMAS / "transaction.avsc")
"""Encodes demo transactions as the demo topology's input expects them."""


def keyed_transactions(events: Sequence[Mapping[str, Any]]) -> KafkaItems:
    """(event id, Avro value) pairs, ready for `streamer.testing.produce`."""
    return [(str(e["id"]).encode(), TRANSACTION.encode(e)) for e in events]


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A real single-node broker started for this test session by `streamer kafka`'s code."""
    port = int(os.environ.get("STREAMER_TEST_KAFKA_PORT", "0")) or free_port_pair()
    broker = LocalKafka(port=port, data_dir=tmp_path_factory.mktemp("kafka"))
    start(broker)
    try:
        yield broker
    finally:
        stop(broker)


@pytest.fixture(scope="session")
def kafka(kafka_broker: LocalKafka) -> str:
    """Bootstrap address of the session's broker."""
    return kafka_broker.bootstrap


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three demo models, trained once per session on a small data set."""
    from streamer.demo.train import ensure_models

    return ensure_models(tmp_path_factory.mktemp("models"), n_train=8000)


@pytest.fixture
def make_topology(kafka: str, demo_models: dict[str, Path], tmp_path: Path) -> TopologyFactory:
    """Write a topology file with unique topics (created on the broker) and load it.

    Keyword arguments replace top-level keys of the default (Avro in, JSON out, one variant
    fraud_v2, small batches, no metrics server); a callable value is called with the
    topology's unique name, which prefixes its topics.
    """

    def factory(partitions: int = 3, create: bool = True, **overrides: Any) -> Topology:
        name = unique("t")
        spec: dict[str, Any] = {
            "name": name,
            "kafka": {"bootstrap_servers": kafka},
            "input": {
                "topic": f"{name}-in",
                "format": "avro",
                "schema": str(SCHEMAS / "transaction.avsc"),
            },
            "features": ["amount", "age_days", "hour", "merchant_risk"],
            "batching": {"max_batch_size": 256, "max_wait_ms": 20},
            "variants": [
                {"name": "champion", "model": str(demo_models["fraud_v2"]), "weight": 1.0}
            ],
            "output": {"topic": f"{name}-out", "format": "json"},
            "lake": {"topic": f"{name}-lake", "format": "json"},
            "dead_letter": {"topic": f"{name}-dlq"},
            "metrics": {"port": None},
            "topics": {"partitions": partitions},
        }
        spec.update({k: v(name) if callable(v) else v for k, v in overrides.items()})
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        topology = load_topology(path)
        if create:
            create_topics(topology)
        return topology

    return factory
