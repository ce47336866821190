"""One log line per Kafka problem and window: the repeat filter, with a fake clock."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError

from streamer.kafka.clients import _error_cb
from streamer.logs import ALWAYS, REPEAT_WINDOW_S, RepeatFilter

REFUSED = (
    "FAIL [rdkafka#consumer-%d] [thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: "
    "Connect to ipv4#127.0.0.1:%d failed: Connection refused (after %dms in state CONNECT)"
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def repeats(clock: FakeClock) -> RepeatFilter:
    return RepeatFilter(clock=clock)


@pytest.fixture
def logger(repeats: RepeatFilter, request: pytest.FixtureRequest) -> Iterator[logging.Logger]:
    logger = logging.getLogger(f"tests.kafka_logging.{request.node.name}")
    logger.addFilter(repeats)
    yield logger
    logger.removeFilter(repeats)


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_repeats_within_the_window_are_counted_then_summarised_once(
    logger: logging.Logger, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for i in range(47):  # a second of an outage, as librdkafka reports it
        clock.now += 0.02
        logger.error(REFUSED, 1 + i % 3, 1, i % 4)
    assert lines(caplog) == [REFUSED % (1, 1, 0)]

    clock.now += REPEAT_WINDOW_S + 1
    logger.error(REFUSED, 1, 1, 7)  # still failing: counted in the next window
    last = REFUSED % (2, 1, 2)  # the summary shows the last repeat
    assert lines(caplog)[1:] == [last + " (repeated 46 times in the last 12s)"]
    assert caplog.records[1].levelno == logging.ERROR

    clock.now += REPEAT_WINDOW_S + 1
    logger.error(REFUSED, 1, 1, 0)
    assert lines(caplog)[2:] == [REFUSED % (1, 1, 7) + " (repeated 1 time in the last 11s)"]


def test_distinct_problems_are_each_reported(
    logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for _ in range(5):
        logger.error(REFUSED, 1, 9092, 0)
        logger.error(REFUSED, 1, 9093, 0)  # another broker is another problem
        logger.warning("Kafka: 1/1 brokers are down")
    assert lines(caplog) == [
        REFUSED % (1, 9092, 0),
        REFUSED % (1, 9093, 0),
        "Kafka: 1/1 brokers are down",
    ]


def test_a_quiet_window_ends_the_problem(
    logger: logging.Logger, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    logger.warning("broker down")
    clock.now += REPEAT_WINDOW_S + 1
    logger.warning("broker down")  # no repeats in between: reported again, no summary
    assert lines(caplog) == ["broker down", "broker down"]


def test_flush_reports_repeats_before_the_window_ends(
    logger: logging.Logger, repeats: RepeatFilter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        logger.warning("broker down")
    repeats.flush()
    assert lines(caplog) == ["broker down", "broker down (repeated 2 times in the last 0s)"]


def test_records_marked_always_are_never_suppressed(
    logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        logger.error("fatal Kafka error: fenced", extra={ALWAYS: True})
    assert lines(caplog) == ["fatal Kafka error: fenced"] * 3


def test_error_cb_leaves_what_librdkafka_logged_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    said = "127.0.0.1:7/bootstrap: Connect to ipv4#127.0.0.1:7 failed: Connection refused"
    logging.getLogger("streamer.kafka.librdkafka").error("FAIL [rdkafka#consumer-1] %s", said)
    _error_cb(KafkaError(KafkaError._TRANSPORT, said))
    _error_cb(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down (unit test)"))
    # Summaries of other tests' repeats may come out first (the filter is process-wide).
    levels = {
        r.getMessage(): r.levelno
        for r in caplog.records
        if r.name == "streamer.kafka" and "repeated" not in r.getMessage()
    }
    assert list(levels.values()) == [logging.DEBUG, logging.WARNING]
    assert "1/1 brokers are down (unit test)" in list(levels)[1]


def test_fatal_errors_are_always_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fatal = KafkaError(KafkaError._FENCED, "fenced by a newer instance (unit test)", fatal=True)
    for _ in range(3):
        _error_cb(fatal)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3
    assert all("fenced by a newer instance" in r.getMessage() for r in errors)
