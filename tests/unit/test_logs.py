"""Structured logs: JSON lines that parse, human lines on a terminal, no secrets in either."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from streamer import logs
from streamer.config import KafkaSettings, load_topology, sensitive
from streamer.logs import (
    REDACTED,
    JsonFormatter,
    RepeatFilter,
    TextFormatter,
    add_secrets,
    choose_format,
    scrub,
    secret_values,
)

ROOT = Path(__file__).resolve().parents[2]


def _marker() -> str:
    return f"marker-{uuid.uuid4().hex}"


@pytest.fixture
def logger(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own writing JSON lines to a string (pytest's handlers stay out), with
    no topology bound (another test in this process may have bound one)."""
    monkeypatch.setattr(logs, "_topology", None)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(f"tests.logs.{request.node.name}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    yield log, out
    log.removeHandler(handler)


def _entries(out: io.StringIO) -> list[dict[str, object]]:
    lines = out.getvalue().splitlines()
    return [json.loads(line) for line in lines]


def test_json_lines_parse_with_the_contract_fields(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = logger
    log.info("assigned partitions %s", [0, 1], extra={"partitions": [0, 1], "generation": 3})
    log.warning('a quote " and a\nnewline', extra={"topology": "other"})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the newline in the message stays inside its line
    first, second = (json.loads(line) for line in lines)
    assert list(first)[:4] == ["ts", "level", "logger", "message"]  # no topology bound here
    assert first["level"] == "info" and first["logger"] == log.name
    assert first["message"] == "assigned partitions [0, 1]"
    assert first["partitions"] == [0, 1] and first["generation"] == 3
    ts = str(first["ts"])
    assert ts.endswith("Z")
    parsed = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None and parsed.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 60
    assert second["message"] == 'a quote " and a\nnewline'
    assert second["topology"] == "other" and second["level"] == "warning"


def test_an_exception_is_a_field_of_one_line(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logger
    try:
        raise KeyError("gone")
    except KeyError:
        log.exception("live control failed a turn; it goes on")
    (line,) = out.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["level"] == "error"
    assert entry["error"] == "KeyError: 'gone'"
    assert "Traceback (most recent call last)" in entry["traceback"]
    assert "raise KeyError" in entry["traceback"]


def test_extra_values_that_are_not_json_become_text(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = logger
    settings = KafkaSettings(config={"sasl.password": "not-for-logs", "acks": "all"}).redacted()
    log.info("settings", extra={"settings": settings, "path": Path("/x/y")})
    (entry,) = _entries(out)
    assert entry["settings"] == {
        "sasl.password": "**********",
        "acks": "all",
        "bootstrap.servers": "localhost:9092",
    }
    assert entry["path"] == "/x/y"
    assert "not-for-logs" not in out.getvalue()


def test_extra_fields_cannot_replace_the_contract_fields(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = logger
    log.info("hello", extra={"level": "fake", "ts": "then", "error": "mine"})
    (entry,) = _entries(out)
    assert entry["level"] == "info" and entry["ts"] != "then"
    assert entry["level_"] == "fake" and entry["ts_"] == "then" and entry["error_"] == "mine"


def test_secret_looking_extra_fields_are_hidden(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = logger
    marker = _marker()
    log.info("login", extra={"sasl.password": marker, "api_token": marker, "user": "ops"})
    (entry,) = _entries(out)
    assert entry["sasl.password"] == REDACTED and entry["api_token"] == REDACTED
    assert entry["user"] == "ops"
    assert marker not in out.getvalue()


def test_registered_secrets_are_scrubbed_from_messages_fields_and_tracebacks(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = logger
    marker = _marker()
    quoted = f'{_marker()}"with\\quotes'  # JSON escapes it: the escaped form is found too
    add_secrets([marker, quoted])
    log.info("connecting with %s", marker, extra={"detail": f"pw={marker}", "raw": quoted})
    try:
        raise ValueError(f"bad password {marker}")
    except ValueError:
        log.exception("failed")
    text = out.getvalue()
    assert marker not in text and quoted not in text
    assert json.dumps(quoted)[1:-1] not in text
    first, second = _entries(out)
    assert first["message"] == f"connecting with {REDACTED}"
    assert first["detail"] == f"pw={REDACTED}" and first["raw"] == REDACTED
    assert second["error"] == f"ValueError: bad password {REDACTED}"
    assert scrub(f"x {marker} y") == f"x {REDACTED} y"


def test_short_values_are_not_searched_for() -> None:
    add_secrets(["ab"])  # would blank out every "ab" in every line
    assert scrub("table stable") == "table stable"


def test_text_lines_for_people_carry_extras_and_no_secrets() -> None:
    marker = _marker()
    add_secrets([marker])
    record = logging.makeLogRecord(
        {
            "name": "streamer.agent",
            "levelno": logging.WARNING,
            "levelname": "WARNING",
            "msg": "retrying with %s",
            "args": (marker,),
            "partition": 3,
        }
    )
    line = TextFormatter().format(record)
    assert line.split(" ", 3)[2:] == [
        "WARNING",
        f"streamer.agent: retrying with {REDACTED} partition=3",
    ]
    assert line[:4].isdigit()  # the date first, as before


def test_repeat_summaries_carry_no_internal_markers(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = logger
    repeats = RepeatFilter()
    log.addFilter(repeats)
    try:
        for _ in range(3):
            log.error("broker down")
        repeats.flush()
    finally:
        log.removeFilter(repeats)
    entries = _entries(out)
    assert [e["message"] for e in entries] == [
        "broker down",
        "broker down (repeated 2 times in the last 0s)",
    ]
    assert all(not any(k.startswith("streamer_") for k in e) for e in entries)


def test_auto_is_text_on_a_terminal_and_json_elsewhere() -> None:
    leader, follower = os.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as tty:
            assert choose_format("auto", tty) == "text"
            assert choose_format("json", tty) == "json"
    finally:
        os.close(leader)
        os.close(follower)
    assert choose_format("auto", io.StringIO()) == "json"
    assert choose_format("text", io.StringIO()) == "text"
    with pytest.raises(ValueError, match="unknown log format"):
        choose_format("xml", io.StringIO())


@pytest.mark.parametrize(
    "key",
    [
        "sasl.password",
        "SSL.KEY.PASSWORD",
        "sasl.oauthbearer.client.secret",
        "my.api.token",
        "plugin.api_key",
        "vault.credentials",
        "ssl.keystore.password",
    ],
)
def test_secret_looking_keys_are_sensitive(key: str) -> None:
    assert sensitive(key)
    assert isinstance(KafkaSettings(config={key: "v"}).redacted()[key], SecretStr)


@pytest.mark.parametrize("key", ["security.protocol", "sasl.mechanism", "acks", "client.id"])
def test_ordinary_keys_are_shown(key: str) -> None:
    assert not sensitive(key)


def test_secret_values_come_from_env_and_files_but_not_user_names_or_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = _marker()
    monkeypatch.setenv("STREAMER_TEST_PASSWORD", f"{marker}-env")
    (tmp_path / "key-password").write_text(f"{marker}-file\n")
    spec = {
        "name": "secrets",
        "input": {"topic": "in"},
        "features": ["x"],
        "variants": [{"name": "a", "model": "a.onnx"}],
        "output": {"topic": "out"},
        "lake": {"topic": "lake"},
        "dead_letter": {"topic": "dlq"},
    }
    spec["kafka"] = {
        "config": {
            "sasl.username": "streamer",
            "sasl.password": "${STREAMER_TEST_PASSWORD}",
            "ssl.key.password_file": str(tmp_path / "key-password"),
            "ssl.key.location": "/etc/key.pem",
            "my.api.token": f"{marker}-token",
            "acks": "all",
        }
    }
    copy = tmp_path / "secrets.yaml"
    copy.write_text(yaml.safe_dump(spec))
    values = secret_values(load_topology(copy))
    assert sorted(values) == [f"{marker}-env", f"{marker}-file", f"{marker}-token"]


def _run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_setup_makes_every_stderr_line_json_even_an_uncaught_exception() -> None:
    marker = _marker()
    code = (
        "import logging, sys, warnings\n"
        "from streamer.logs import setup_logging, add_secrets\n"
        "assert setup_logging('debug', 'auto') == 'json'\n"
        "add_secrets([sys.argv[1]])\n"
        "logging.getLogger('streamer.agent').debug('hello %s', sys.argv[1], extra={'n': 1})\n"
        "logging.getLogger('streamer.kafka.librdkafka').info('below nothing')\n"
        "warnings.warn('careful')\n"
        "raise RuntimeError('boom ' + sys.argv[1])\n"
    )
    result = _run_python(code, marker)
    assert result.returncode == 1
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert [e["logger"] for e in entries] == [
        "streamer.agent",
        "streamer.kafka.librdkafka",
        "py.warnings",
        "streamer",
    ]
    assert entries[0]["level"] == "debug" and entries[0]["n"] == 1
    assert entries[-1]["level"] == "critical"
    assert entries[-1]["error"] == f"RuntimeError: boom {REDACTED}"
    assert marker not in result.stderr


def test_setup_with_text_writes_human_lines_and_rejects_unknown_levels() -> None:
    code = (
        "import logging\n"
        "from streamer.logs import setup_logging\n"
        "setup_logging('info', 'text')\n"
        "logging.getLogger('streamer.agent').info('hello')\n"
        "logging.getLogger('streamer.agent').debug('hidden')\n"
        "try:\n"
        "    setup_logging('loud')\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.splitlines()
    assert line[:4].isdigit() and line.endswith(" INFO streamer.agent: hello")
    assert result.stdout.strip() == "unknown log level 'loud'"
