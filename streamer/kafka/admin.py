"""Topic administration for a topology (`streamer topics create`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # exported, not in stubs
    AdminClient,
    ClusterMetadata,
    ConfigResource,
    NewTopic,
)

from streamer.config import Topology
from streamer.errors import StreamerError
from streamer.kafka.clients import wait_for_cluster

ADMIN_TIMEOUT_S = 30.0
HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True)
class TopicResult:
    topic: str
    created: bool
    """False when the topic already existed (creation is idempotent)."""
    partitions: int


def create_topics(
    topology: Topology,
    partitions: int | None = None,
    replication_factor: int | None = None,
    timeout_s: float = ADMIN_TIMEOUT_S,
) -> list[TopicResult]:
    """Create every topic the topology uses; existing ones are left as they are."""
    admin = wait_for_cluster(topology.kafka, timeout_s)
    n = partitions or topology.topics.partitions
    rf = replication_factor or topology.topics.replication_factor
    new = []
    for topic in topology.all_topics():
        config = {}
        count = n
        if topic in topology.control_topics():
            # The latest record per key (topology, agent) is what matters; one partition
            # keeps order. Compaction waits a day so `streamer control history` and
            # `rollback` have the recent past to work with.
            config = {"cleanup.policy": "compact", "min.compaction.lag.ms": str(DAY_MS)}
            count = 1
        elif topic == topology.checkpoint_topic:
            # A checkpoint a second per partition: hourly segments let compaction keep
            # what a restarting controller reads short.
            config = {"cleanup.policy": "compact", "segment.ms": str(HOUR_MS)}
            count = 1
        new.append(NewTopic(topic, num_partitions=count, replication_factor=rf, config=config))
    futures = admin.create_topics(new, operation_timeout=timeout_s, request_timeout=timeout_s)
    created = {}
    for spec in new:
        try:
            futures[spec.topic].result()
            created[spec.topic] = True
        except KafkaException as exc:
            err = exc.args[0]
            if not isinstance(err, KafkaError) or err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise StreamerError(f"cannot create topic {spec.topic}: {err}") from None
            created[spec.topic] = False
    metadata = _wait_for_leaders(admin, list(created), timeout_s)
    return [
        TopicResult(topic, was_created, len(metadata.topics[topic].partitions))
        for topic, was_created in created.items()
    ]


def _wait_for_leaders(admin: AdminClient, topics: list[str], timeout_s: float) -> ClusterMetadata:
    """New topics answer produce and offset requests only once every partition has a leader."""
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = admin.list_topics(timeout=timeout_s)
        pending = [
            t
            for t in topics
            if t not in metadata.topics
            or metadata.topics[t].error is not None
            or any(p.leader < 0 for p in metadata.topics[t].partitions.values())
        ]
        if not pending:
            return metadata
        if time.monotonic() > deadline:
            raise StreamerError(
                f"topic(s) {', '.join(pending)} have no leader after {timeout_s:.0f}s"
            )
        time.sleep(0.1)


PRODUCER_MAX_BYTES = 1_000_000
"""librdkafka's default `message.max.bytes`: larger records are refused before sending."""


def record_limits(admin: AdminClient, topology: Topology, timeout_s: float) -> dict[str, int]:
    """Per topic the agent writes: the largest record it accepts (the topic's
    `max.message.bytes`, capped by the producer's `message.max.bytes`)."""
    producer_max = int(topology.kafka.config.get("message.max.bytes", PRODUCER_MAX_BYTES))
    topics = [t for t in topology.agent_topics() if t != topology.input.topic]
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics]
    limits = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout_s).items():
        entry = future.result().get("max.message.bytes")
        topic_max = int(entry.value) if entry is not None and entry.value else producer_max
        limits[resource.name] = min(topic_max, producer_max)
    return limits
