"""Logging filters that keep a Kafka outage readable: one line per problem, not fifty a second.

librdkafka reports every failed reconnect (several a second while a broker is down). A
`RepeatFilter` passes the first report of a problem, counts its repeats for `window_s`,
then logs one summary line per window for as long as they go on.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

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
