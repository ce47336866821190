"""The retry helper for transient Kafka errors."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamer.kafka.clients import retrying


def test_retries_until_the_call_succeeds() -> None:
    failures = [KafkaException(KafkaError(KafkaError.NOT_COORDINATOR))] * 2

    def call() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    assert retrying(call, timeout_s=5) == "ok"
    assert failures == []


def test_errors_librdkafka_flags_retriable_are_retried() -> None:
    # A code outside the transient list: the flag alone decides.
    failures = [KafkaException(KafkaError(KafkaError.INVALID_REPLICATION_FACTOR, retriable=True))]

    def call() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    assert retrying(call, timeout_s=5) == "ok"


@pytest.mark.parametrize(
    "error",
    [
        KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED),
        KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED),
        KafkaError(KafkaError._INVALID_ARG),
        KafkaError(KafkaError.NOT_COORDINATOR, fatal=True),
    ],
    ids=["topic-authorization", "group-authorization", "invalid-arg", "fatal"],
)
def test_errors_that_cannot_succeed_raise_at_once(error: KafkaError) -> None:
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        raise KafkaException(error)

    with pytest.raises(KafkaException) as raised:
        retrying(call, timeout_s=5)
    assert calls == 1
    assert raised.value.args[0].code() == error.code()


def test_gives_up_after_the_timeout_with_the_last_error() -> None:
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        raise KafkaException(KafkaError(KafkaError.NOT_COORDINATOR))

    with pytest.raises(KafkaException):
        retrying(call, timeout_s=0.3)
    assert calls >= 2


def test_other_errors_are_not_retried() -> None:
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        retrying(call, timeout_s=5)
    assert calls == 1
