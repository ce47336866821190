"""Cluster settings are logged with librdkafka's sensitive properties hidden."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import Producer
from pydantic import SecretStr

from streamer.config import SENSITIVE_KEYS, KafkaSettings

SECRETS = {
    "sasl.oauthbearer.config": "principal=admin extension_token=oauth-config-secret",
    "sasl.oauthbearer.assertion.private.key.passphrase": "assertion-passphrase-secret",
    "ssl.key.password": "ssl-key-password-secret",
    "sasl.password": "sasl-password-secret",
}


def test_sensitive_values_are_hidden_and_others_shown() -> None:
    kafka = KafkaSettings(
        bootstrap_servers="b1:9093", config={**SECRETS, "security.protocol": "SASL_SSL"}
    )
    redacted = kafka.redacted()
    shown = f"{redacted} {redacted!r} {list(redacted.values())}"
    for key, secret in SECRETS.items():
        assert secret not in shown, key
        assert isinstance(redacted[key], SecretStr)
        assert str(redacted[key]) == "**********"
        assert redacted[key].get_secret_value() == secret
    assert redacted["security.protocol"] == "SASL_SSL"
    assert redacted["bootstrap.servers"] == "b1:9093"
    assert kafka.client_config()["sasl.password"] == "sasl-password-secret"  # librdkafka needs it


def test_the_list_is_what_librdkafka_itself_redacts() -> None:
    """The bundled librdkafka prints `[redacted]` for each listed key in its config dump."""
    # librdkafka dumps an alias under its canonical name, which is in the list too.
    alias = "sasl.oauthbearer.client.credentials.client.secret"
    visible = {
        "sasl.mechanisms": "PLAIN",
        "sasl.oauthbearer.client.id": "x",
        "ssl.ca.location": "x",
    }
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("tests.redaction.librdkafka")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Collect())
    keys = sorted(SENSITIVE_KEYS - {alias})
    producer = Producer(
        {
            "bootstrap.servers": "127.0.0.1:1",
            "debug": "conf",
            "logger": logger,
            **dict.fromkeys(keys, "x"),
            **visible,
        }
    )
    producer.poll(0.5)  # the config dump is logged on the first poll
    dump = dict(line.split("]:", 1)[1].strip().split(" = ", 1) for line in lines if " = " in line)
    for key in keys:
        assert dump.get(key) == "[redacted]", key
    for key, value in visible.items():
        assert dump.get(key) == value, key


@pytest.mark.parametrize("key", ["SASL.PASSWORD", "Ssl.Key.Password"])
def test_case_does_not_let_a_secret_through(key: str) -> None:
    redacted = KafkaSettings(config={key: "hunter2"}).redacted()
    assert "hunter2" not in str(redacted)
