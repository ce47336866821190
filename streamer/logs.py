"""The process's log: its setup and format, secrets kept out of it, and filters that keep a
Kafka outage readable (one line per problem, not fifty a second).

`setup_logging` writes one JSON object a line (`--log-format json`, and `auto` when stderr is
not a terminal: a container, a service manager, a file) or human lines (`text`, `auto` on a
terminal). JSON lines carry `ts` (ISO 8601, UTC), `level`, `logger`, `topology` (once
`bind_topology` named it), `message`, any `extra={...}` fields, and `error`/`traceback` for
exceptions; a traceback is a field, never extra lines. Every line, in both formats, has the
secret values of the topology's Kafka settings replaced by `[redacted]`, and extra fields
under secret-looking names are hidden.

librdkafka reports every failed reconnect (several a second while a broker is down). A
`RepeatFilter` passes the first report of a problem, counts its repeats for `window_s`,
then logs one summary line per window for as long as they go on.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

import orjson

from streamer.config import sensitive

if TYPE_CHECKING:
    from streamer.config import Topology

REPEAT_WINDOW_S = 10.0
"""How long repeats of a reported problem are counted before the next line about it."""

ALWAYS = "streamer_always_log"
"""Record attribute (`extra={ALWAYS: True}`) that no filter here suppresses: fatal errors."""

_SUMMARY = "streamer_repeat_summary"

_VOLATILE = (
    (re.compile(r"#(consumer|producer)-\d+"), r"#\1"),  # which client instance said it
    (re.compile(r"\b\d+ms\b"), "Nms"),  # "(after 3ms in state CONNECT)"
    (re.compile(r"\b\d+ identical error"), "N identical error"),
)
"""Parts of librdkafka's messages that differ between reports of one problem."""


def fingerprint(record: logging.LogRecord) -> tuple[str, int, str]:
    """What makes two records reports of the same problem."""
    message = record.getMessage()
    for pattern, replacement in _VOLATILE:
        message = pattern.sub(replacement, message)
    return record.name, record.levelno, message


@dataclass
class _Window:
    opened: float
    suppressed: int = 0
    last: logging.LogRecord | None = None


class RepeatFilter(logging.Filter):
    """Passes the first record of each problem; repeats within `window_s` are counted.

    When a problem's window has passed, its repeats come out as one line,
    "<message> (repeated N times in the last 10s)", and a new window opens; a window without
    repeats closes the problem, so its next report is passed again. Windows are checked
    whenever a record passes through the filter and on `flush()`.
    Records marked with `ALWAYS` pass untouched.
    """

    def __init__(
        self, window_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        self._windows: dict[tuple[str, int, str], _Window] = {}
        self._lock = threading.Lock()  # librdkafka may log from its own threads

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, ALWAYS, False) or getattr(record, _SUMMARY, False):
            return True
        key = fingerprint(record)
        with self._lock:
            now = self._clock()
            summaries = self._close_windows(now, flush=False)
            window = self._windows.get(key)
            if window is None:
                self._windows[key] = _Window(now)
            else:
                window.suppressed += 1
                window.last = record
        _emit(summaries)
        return window is None

    def flush(self) -> None:
        """Log the repeats counted so far, also of windows that have not passed yet."""
        with self._lock:
            summaries = self._close_windows(self._clock(), flush=True)
        _emit(summaries)

    def _close_windows(self, now: float, *, flush: bool) -> list[logging.LogRecord]:
        summaries = []
        for key, window in list(self._windows.items()):
            elapsed = now - window.opened
            if elapsed < self.window_s and not (flush and window.suppressed):
                continue
            if window.last is None:  # a whole window without repeats: the problem is over
                del self._windows[key]
                continue
            summaries.append(_summary(window.last, window.suppressed, elapsed))
            self._windows[key] = _Window(now)  # the repeats go on: count them afresh
        return summaries


def _summary(last: logging.LogRecord, times: int, elapsed_s: float) -> logging.LogRecord:
    plural = "" if times == 1 else "s"
    text = f"{last.getMessage()} (repeated {times} time{plural} in the last {elapsed_s:.0f}s)"
    fields = {"msg": text, "args": None, "exc_info": None, "exc_text": None, _SUMMARY: True}
    return logging.makeLogRecord({**last.__dict__, **fields})


def _emit(summaries: list[logging.LogRecord]) -> None:
    # Outside the filter's lock: the handlers may log, and loggers may share this filter.
    for record in summaries:
        logging.getLogger(record.name).handle(record)


class RecentMessages(logging.Filter):
    """Remembers the last `size` messages of the loggers it is added to; passes every record."""

    def __init__(self, size: int = 64) -> None:
        super().__init__()
        self._messages: deque[str] = deque(maxlen=size)
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            self._messages.append(record.getMessage())
        return True

    def mention(self, text: str) -> bool:
        """Whether one of the remembered messages contains `text`."""
        with self._lock:
            return any(text in message for message in self._messages)


# -- secrets -------------------------------------------------------------------------------
REDACTED = "[redacted]"
MIN_SECRET_LEN = 4
"""Shorter secret values are not searched for in log text (they would blank out words)."""
_NOT_SCRUBBED = ("sasl.username",)
"""Sensitive settings whose values are hidden as fields but not searched for in text: a user
name is often an ordinary word ("streamer") that would blank out logger names."""

_secrets: tuple[str, ...] = ()
_secrets_lock = threading.Lock()


def add_secrets(values: Iterable[str]) -> None:
    """Values that must never be written: `scrub` replaces them in every log line."""
    global _secrets  # noqa: PLW0603 - one process-wide set, read on every line without a lock
    with _secrets_lock:
        found = set(_secrets)
        for value in values:
            if len(value) >= MIN_SECRET_LEN:
                found.add(value)
                escaped = orjson.dumps(value).decode()[1:-1]  # as it looks inside JSON
                if escaped != value:
                    found.add(escaped)
        _secrets = tuple(sorted(found, key=len, reverse=True))  # longest first


def secret_values(topology: Topology) -> list[str]:
    """The values of the topology's secret Kafka settings (after `${ENV}` and `_file`)."""
    return [
        str(value)
        for key, value in topology.kafka.config.items()
        if sensitive(key)
        and key.lower() not in _NOT_SCRUBBED
        and not key.lower().endswith(".location")  # a file path, not the secret itself
    ]


def scrub(text: str) -> str:
    """`text` with every registered secret value replaced by `[redacted]`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


# -- format --------------------------------------------------------------------------------
class LogFormat(StrEnum):
    """`--log-format`: auto is text on a terminal and JSON anywhere else."""

    AUTO = "auto"
    JSON = "json"
    TEXT = "text"


LOG_FORMATS = tuple(f.value for f in LogFormat)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_topology: str | None = None


def bind_topology(topology: Topology) -> None:
    """Name the topology in every JSON line from now on, and keep its secrets out of them."""
    global _topology  # noqa: PLW0603 - a process serves one topology
    _topology = topology.name
    add_secrets(secret_values(topology))


_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    ALWAYS,
    _SUMMARY,
}
"""LogRecord attributes that are not `extra` fields."""
_CORE = ("ts", "level", "logger", "topology", "message", "error", "traceback", "stack")


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's `extra={...}` fields; values under secret-looking names hidden."""
    return {
        str(key): REDACTED if sensitive(str(key)) else value
        for key, value in record.__dict__.items()
        if key not in _RECORD_FIELDS and not str(key).startswith("_")
    }


def _jsonable(value: Any) -> Any:
    return str(value)  # SecretStr shows as "**********", Path as its text, the rest as str()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        entry: dict[str, Any] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        extras = extra_fields(record)
        topology = extras.pop("topology", None) or _topology
        if topology is not None:
            entry["topology"] = topology
        entry["message"] = record.getMessage().rstrip("\n")
        for key, value in extras.items():
            entry[f"{key}_" if key in _CORE else key] = value
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["error"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        options = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
        return scrub(orjson.dumps(entry, default=_jsonable, option=options).decode())


class TextFormatter(logging.Formatter):
    """`TIME LEVEL LOGGER: MESSAGE key=value ...`, for people at a terminal."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        extras = " ".join(f"{k}={v}" for k, v in extra_fields(record).items())
        return f"{line} {extras}" if extras else line

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def choose_format(log_format: str, stream: IO[str]) -> str:
    """`json` or `text`: `auto` is text on a terminal, JSON anywhere else."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r} (one of {', '.join(LOG_FORMATS)})")
    if log_format != "auto":
        return str(log_format)
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "json"


_OURS = "streamer_handler"


def setup_logging(level: str, log_format: str = "auto", stream: IO[str] | None = None) -> str:
    """Log records at `level` and above to `stream` (stderr) in `log_format`; returns the
    format chosen. ValueError for an unknown level or format.

    Like `logging.basicConfig`, it leaves a root logger that has other handlers alone (a
    test runner's, or an application embedding streamer); its own earlier handler it
    replaces. In JSON, uncaught exceptions and Python warnings are JSON lines too.
    """
    out = stream if stream is not None else sys.stderr
    chosen = choose_format(log_format, out)
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(handler)
    if root.handlers:
        return chosen
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    setattr(handler, _OURS, True)
    root.addHandler(handler)
    root.setLevel(numeric)
    if chosen == "json":
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread
    return chosen


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("streamer").critical(
        "uncaught %s", kind.__name__, exc_info=(kind, exc, tb), extra={ALWAYS: True}
    )


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or args.exc_type is SystemExit:
        return
    thread = args.thread.name if args.thread is not None else "?"
    logging.getLogger("streamer").critical(
        "uncaught %s in thread %s",
        args.exc_type.__name__,
        thread,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        extra={ALWAYS: True},
    )
