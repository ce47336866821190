"""The client constructors against real sockets: quiet during an outage, errors with a cause."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from confluent_kafka import KafkaError

from streamer.config import KafkaSettings
from streamer.errors import KafkaUnavailable
from streamer.kafka.clients import make_consumer, wait_for_cluster

pytestmark = pytest.mark.integration


def _closed_port() -> int:
    """A local port nothing listens on: every connection attempt is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_refusing_broker_is_reported_once_not_every_reconnect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[KafkaError] = []
    port = _closed_port()
    consumer = make_consumer(
        KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}"),
        "streamer-test-outage",
        on_error=errors.append,
    )
    try:
        consumer.subscribe(["streamer-test-outage"])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            consumer.consume(num_messages=10, timeout=0.1)
    finally:
        consumer.close()
    # Other tests' clients may still be logging in this process: count this client's lines.
    loud = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and f":{port}" in r.getMessage()
    ]
    refusals = [e for e in errors if e.code() == KafkaError._TRANSPORT]
    assert len(refusals) > 10, "librdkafka kept reconnecting (else this test shows nothing)"
    assert any("Connection refused" in line for line in loud), "the outage is reported"
    assert len(loud) <= 4, loud
    assert len(set(loud)) == len(loud), "no refusal is logged twice"


def test_wait_for_cluster_says_why_the_cluster_refused(kafka: str) -> None:
    """A PLAINTEXT broker answers a SASL client's handshake with an error: that error shows."""
    settings = KafkaSettings(
        bootstrap_servers=kafka,
        config={
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "u",
            "sasl.password": "p",
        },
    )
    with pytest.raises(KafkaUnavailable) as raised:
        wait_for_cluster(settings, timeout_s=30)  # refused credentials end the wait at once
    message = str(raised.value)
    assert "\n" not in message
    assert f"cannot reach Kafka at {kafka}: " in message
    assert "SASL PLAIN mechanism handshake failed" in message, message
    assert "security settings" in message, message
    assert "(after " not in message  # librdkafka's connection-state detail is left out


def test_wait_for_cluster_says_the_connection_was_refused() -> None:
    port = _closed_port()
    with pytest.raises(KafkaUnavailable) as raised:
        wait_for_cluster(KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}"), timeout_s=2)
    message = str(raised.value)
    assert f"Connect to ipv4#127.0.0.1:{port} failed: Connection refused" in message, message
    assert "kafka.bootstrap_servers" in message
