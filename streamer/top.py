"""`streamer top TOPOLOGY`: a live terminal view of a topology's agents and bandit controller,
read from their /metrics endpoints.

Every `interval_s` each target's /metrics is scraped; rates (events/s, dead letters/s,
predictions/s) and histograms (end-to-end p50/p99, mean batch size) are computed from the
difference between the newest scrape and the one `WINDOW` scrapes before it, gauges (lag,
weights, drift, the controller's evidence) are the newest values. On a terminal the view is
redrawn in place (the alternate screen, plain ANSI) until `q` or Ctrl-C; elsewhere each
refresh is printed as a block of lines.

Targets are `--targets HOST:PORT,...`, or discovered: the agents' reports on the status topic
(their `metrics` address, else their host and `metrics.port`), the topology's own
`metrics.host:metrics.port` when there is no status topic, and the controller at
`metrics.host:bandit.metrics_port`. Discovery is repeated every `DISCOVER_EVERY_S`.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from streamer.config import Topology

WINDOW = 5
"""Rates and quantiles cover the last WINDOW refreshes (5 s at the default interval)."""
SCRAPE_TIMEOUT_S = 0.8
DISCOVER_EVERY_S = 10.0
LABEL = 40
"""Width of the agent column: its address, then its id."""
STALE_AFTER_S = 90.0
"""A status report older than this is of an agent that is gone (3 status intervals)."""

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


def parse(text: str) -> Samples:
    """Prometheus text exposition -> {(sample name, sorted labels): value}."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return samples


def select_samples(samples: Samples, name: str, **labels: str) -> dict[Labels, float]:
    """Samples called `name` whose labels include `labels`."""
    want = set(labels.items())
    return {lab: v for (n, lab), v in samples.items() if n == name and want <= set(lab)}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sum of the matching samples; None when there are none."""
    found = select_samples(samples, name, **labels)
    return sum(found.values()) if found else None


def by_label(samples: Samples, name: str, label: str, **labels: str) -> dict[str, float]:
    """The matching samples summed per value of `label`."""
    out: dict[str, float] = {}
    for lab, v in select_samples(samples, name, **labels).items():
        key = dict(lab).get(label)
        if key is not None:
            out[key] = out.get(key, 0.0) + v
    return out


@dataclass(frozen=True)
class Scrape:
    at: float
    """time.monotonic() of the scrape."""
    samples: Samples


def _delta(new: float, old: float) -> float:
    return new if new < old else new - old  # a counter that went down: the process restarted


def increase(history: Iterable[Scrape], name: str, **labels: str) -> tuple[float, float] | None:
    """(increase of a counter, seconds) over the scrapes; None with fewer than two."""
    scrapes = list(history)
    if len(scrapes) < 2:
        return None
    old, new = scrapes[0], scrapes[-1]
    now = value(new.samples, name, **labels)
    if now is None:
        return None
    return _delta(now, value(old.samples, name, **labels) or 0.0), new.at - old.at


def rate(history: Iterable[Scrape], name: str, **labels: str) -> float | None:
    found = increase(history, name, **labels)
    if found is None or found[1] <= 0:
        return None
    return found[0] / found[1]


def rates_by_label(history: Iterable[Scrape], name: str, label: str) -> dict[str, float]:
    scrapes = list(history)
    if len(scrapes) < 2 or scrapes[-1].at <= scrapes[0].at:
        return {}
    old, new = (by_label(s.samples, name, label) for s in (scrapes[0], scrapes[-1]))
    seconds = scrapes[-1].at - scrapes[0].at
    return {k: _delta(v, old.get(k, 0.0)) / seconds for k, v in new.items()}


Buckets = dict[float, float]
"""Upper bound (le) -> cumulative count."""


def bucket_increase(history: Iterable[Scrape], name: str) -> Buckets:
    """A histogram's cumulative buckets over the scrapes (newest minus oldest)."""
    scrapes = list(history)
    if len(scrapes) < 2:
        return {}
    old, new = (by_label(s.samples, f"{name}_bucket", "le") for s in (scrapes[0], scrapes[-1]))
    return {float(le): _delta(v, old.get(le, 0.0)) for le, v in new.items()}


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus's histogram_quantile: linear within the bucket the rank falls in."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the largest bound: the largest bound is all we know
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def mean_of(history: Iterable[Scrape], name: str) -> float | None:
    """A histogram's mean observation over the scrapes."""
    count = increase(history, f"{name}_count")
    total = increase(history, f"{name}_sum")
    if count is None or total is None or count[0] <= 0:
        return None
    return total[0] / count[0]


def merge(buckets: Iterable[Buckets]) -> Buckets:
    merged: Buckets = {}
    for b in buckets:
        for le, count in b.items():
            merged[le] = merged.get(le, 0.0) + count
    return merged


# -- targets ------------------------------------------------------------------------------
@dataclass
class Target:
    """One /metrics endpoint and what was scraped from it."""

    address: str
    """host:port (or a base URL)."""
    name: str = ""
    """The agent id from its status report; empty when not known."""
    kind: str = ""
    """agent or controller; found from the metrics when not known."""
    history: deque[Scrape] = field(default_factory=lambda: deque(maxlen=WINDOW + 1))
    error: str | None = None

    @property
    def url(self) -> str:
        base = self.address if "://" in self.address else f"http://{self.address}"
        return base.rstrip("/") + "/metrics"

    @property
    def latest(self) -> Samples:
        return self.history[-1].samples if self.history else {}

    def record(self, text: str | None, error: str | None, at: float) -> None:
        """Keep a scrape (its text), or note why there is none."""
        if text is None:
            self.error = error or "no answer"
            return
        try:
            samples = parse(text)
        except ValueError as exc:
            self.error = f"unreadable metrics: {exc}"
            return
        self.error = None
        self.history.append(Scrape(at, samples))
        if not self.kind:
            controller = any(n.startswith("streamer_controller_") for n, _ in samples)
            self.kind = "controller" if controller else "agent"


def scrape(url: str, timeout_s: float = SCRAPE_TIMEOUT_S) -> tuple[str | None, str | None]:
    """(text, None), or (None, why not)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - http only
            return resp.read().decode("utf-8", "replace"), None
    except urllib.error.HTTPError as exc:
        return None, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, str(reason) or type(exc).__name__


def parse_targets(text: str) -> list[Target]:
    """`host:port,host:port` -> targets (kind found from their metrics)."""
    return [Target(t.strip()) for t in text.split(",") if t.strip()]


def _connectable(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # noqa: S104 - a bind address


def discover(
    topology: Topology, read_status: Callable[[], list[tuple[str, bytes | None]]] | None = None
) -> list[Target]:
    """The topology's agents (from their status reports, or its own metrics address) and
    its controller. `read_status` returns the status topic's (key, value) records."""
    targets: list[Target] = []
    port = topology.metrics.port
    status_topic = topology.routing.agent_status_topic
    if status_topic is not None:
        if read_status is None:
            read_status = _status_reader(topology, status_topic)
        latest: dict[str, bytes | None] = dict(read_status())
        now_ms = time.time() * 1000
        for agent, raw in sorted(latest.items()):
            report = _report(raw)
            if report is None or report.get("topology") != topology.name:
                continue
            if now_ms - float(report.get("ts", 0)) > STALE_AFTER_S * 1000:
                continue
            address = report.get("metrics")
            if not address and port and report.get("host"):
                address = f"{report['host']}:{port}"
            if address:
                targets.append(Target(str(address), name=agent, kind="agent"))
    elif port:
        targets.append(Target(f"{_connectable(topology.metrics.host)}:{port}", kind="agent"))
    if topology.bandit is not None and topology.bandit.metrics_port:
        address = f"{_connectable(topology.metrics.host)}:{topology.bandit.metrics_port}"
        targets.append(Target(address, name="controller", kind="controller"))
    return targets


def _report(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None  # a tombstone: the agent stopped
    try:
        report = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return report if isinstance(report, dict) else None


def _status_reader(topology: Topology, topic: str) -> Callable[[], list[tuple[str, bytes | None]]]:
    def read() -> list[tuple[str, bytes | None]]:
        # Lazy: only discovery needs Kafka (`--targets` does not).
        from streamer.control.topic import read_all  # noqa: PLC0415

        return [(e.key, e.value) for e in read_all(topology.kafka, topic, timeout_s=10.0)]

    return read


# -- the view -----------------------------------------------------------------------------
def _num(v: float | None, digits: int = 1) -> str:
    if v is None or math.isnan(v):
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else _num(seconds * 1000.0, 1 if seconds < 0.1 else 0)


def _share(values: Iterable[float]) -> str:
    found = sorted(set(round(v, 3) for v in values))
    if not found:
        return "-"
    if len(found) == 1:
        return f"{found[0]:.3f}"
    return f"{found[0]:.3f}~{found[-1]:.3f}"  # agents disagree: a change is being applied


def _psi(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


@dataclass
class AgentLine:
    events: float | None
    p50: float | None
    p99: float | None
    batch: float | None
    dead: float | None
    lag: float | None


class View:
    """The targets, their scrapes, and the lines that show them."""

    def __init__(self, topology: str, targets: list[Target], interval_s: float = 1.0) -> None:
        self.topology = topology
        self.targets = targets
        self.interval_s = interval_s
        self.note = ""
        """A line about discovery (what it found, or why it failed)."""

    def set_targets(self, found: list[Target]) -> None:
        """Adopt newly discovered targets, keeping the history of the known ones."""
        known = {t.address: t for t in self.targets}
        merged = []
        for t in found:
            old = known.get(t.address)
            if old is not None:
                old.name, old.kind = t.name or old.name, t.kind or old.kind
                merged.append(old)
            else:
                merged.append(t)
        self.targets = merged

    def refresh(self, fetch: Callable[[str], tuple[str | None, str | None]] = scrape) -> None:
        """Scrape every target once (concurrently)."""
        targets = list(self.targets)
        if not targets:
            return
        with ThreadPoolExecutor(max_workers=min(len(targets), 16)) as pool:
            answers = list(pool.map(lambda t: fetch(t.url), targets))
        at = time.monotonic()
        for target, (text, error) in zip(targets, answers, strict=True):
            target.record(text, error, at)

    @property
    def agents(self) -> list[Target]:
        return [t for t in self.targets if t.kind != "controller"]

    @property
    def controllers(self) -> list[Target]:
        return [t for t in self.targets if t.kind == "controller"]

    def _agent_line(self, t: Target) -> AgentLine:
        h = t.history
        return AgentLine(
            events=rate(h, "streamer_events_consumed_total"),
            p50=quantile(0.5, bucket_increase(h, "streamer_end_to_end_seconds")),
            p99=quantile(0.99, bucket_increase(h, "streamer_end_to_end_seconds")),
            batch=mean_of(h, "streamer_batch_size"),
            dead=rate(h, "streamer_dead_letters_total"),
            lag=value(t.latest, "streamer_consumer_lag"),
        )

    def _total(self, agents: list[Target]) -> AgentLine:
        up = [t for t in agents if t.error is None and t.history]
        e2e = merge(bucket_increase(t.history, "streamer_end_to_end_seconds") for t in up)
        counts = [increase(t.history, "streamer_batch_size_count") for t in up]
        sums = [increase(t.history, "streamer_batch_size_sum") for t in up]
        n = sum(c[0] for c in counts if c is not None)
        s = sum(x[0] for x in sums if x is not None)

        def added(values: Iterable[float | None]) -> float | None:
            found = [v for v in values if v is not None]
            return sum(found) if found else None

        return AgentLine(
            events=added(rate(t.history, "streamer_events_consumed_total") for t in up),
            p50=quantile(0.5, e2e),
            p99=quantile(0.99, e2e),
            batch=s / n if n > 0 else None,
            dead=added(rate(t.history, "streamer_dead_letters_total") for t in up),
            lag=added(value(t.latest, "streamer_consumer_lag") for t in up),
        )

    def lines(self, now: float | None = None) -> list[str]:
        """The view as plain lines (no colours, no escapes)."""
        agents, controllers = self.agents, self.controllers
        clock = time.strftime("%H:%M:%S", time.localtime(now))
        window = f"{WINDOW * self.interval_s:g}s"
        out = [
            f"streamer top  {self.topology}  {clock}  {len(agents)} agent(s), "
            f"{len(controllers)} controller(s)  rates over {window}  q quits",
        ]
        if self.note:
            out.append(self.note)
        out.append("")
        head = (
            f"{'agent':<{LABEL}} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'batch':>7} {'dead/s':>8} {'lag':>9}"
        )
        out.append(head)
        for t in agents:
            label = f"{t.address} {t.name}".strip()
            if t.error is not None or not t.history:
                why = f"down: {t.error}" if t.error is not None else "waiting for a first scrape"
                out.append(f"{label[:LABEL]:<{LABEL}} {why}")
                continue
            out.append(_row(label, self._agent_line(t)))
        if len(agents) > 1:
            out.append(_row(f"total ({len(agents)} agents)", self._total(agents)))
        if not agents:
            out.append("(no agents found)")
        out.append("")
        out.extend(self._variant_lines(agents, controllers))
        out.append("")
        out.extend(self._dead_letter_lines(agents))
        out.extend(self._drift_lines(agents))
        out.extend(self._controller_lines(controllers))
        return out

    def _variant_lines(self, agents: list[Target], controllers: list[Target]) -> list[str]:
        up = [t for t in agents if t.error is None and t.history]
        ctl = [t for t in controllers if t.error is None and t.history]
        weights: dict[str, list[float]] = {}
        versions: dict[str, set[str]] = {}
        shadows: set[str] = set()
        served: dict[str, float] = {}
        pred_drift: dict[str, float] = {}
        feature_drift: dict[str, tuple[float, str]] = {}
        for t in up:
            for name, w in by_label(t.latest, "streamer_variant_weight", "variant").items():
                weights.setdefault(name, []).append(w)
            for lab in select_samples(t.latest, "streamer_model_info"):
                d = dict(lab)
                versions.setdefault(d.get("variant", "?"), set()).add(d.get("version", "?"))
            shadows |= set(
                by_label(t.latest, "streamer_predictions_total", "variant", shadow="true")
            )
            predicted = rates_by_label(t.history, "streamer_predictions_total", "variant")
            for name, r in predicted.items():
                served[name] = served.get(name, 0.0) + r
            for name, v in by_label(t.latest, "streamer_prediction_drift_psi", "variant").items():
                pred_drift[name] = max(v, pred_drift.get(name, v))
            for lab, v in select_samples(t.latest, "streamer_feature_drift_psi").items():
                d = dict(lab)
                name, feature = d.get("variant", ""), d.get("feature", "?")
                if v >= feature_drift.get(name, (-1.0, ""))[0]:
                    feature_drift[name] = (v, feature)
        rewards: dict[str, float] = {}
        pulls: dict[str, float] = {}
        chosen: dict[str, float] = {}
        for t in ctl:
            rewards.update(by_label(t.latest, "streamer_controller_mean_reward", "variant"))
            pulls.update(by_label(t.latest, "streamer_controller_pulls", "variant"))
            chosen.update(by_label(t.latest, "streamer_controller_weight", "variant"))
        names = list(
            dict.fromkeys([*weights, *sorted(shadows), *versions, *rewards, *chosen, *served])
        )
        out = [
            f"{'variant':<16} {'version':<10} {'weight':>11} {'pred/s':>9} {'pred psi':>9} "
            f"{'max feature psi':>22} {'reward':>7} {'pulls':>9} {'ctl weight':>10}"
        ]
        for name in names:
            weight = (
                "shadow"
                if name in shadows and name not in weights
                else _share(weights.get(name, []))
            )
            worst = feature_drift.get(name)
            feature = f"{worst[0]:.3f} {worst[1]}" if worst else "-"
            out.append(
                f"{name[:16]:<16} {','.join(sorted(versions.get(name, {'-'})))[:10]:<10} "
                f"{weight:>11} {_num(served.get(name)):>9} {_psi(pred_drift.get(name)):>9} "
                f"{feature[:22]:>22} {_reward(rewards.get(name)):>7} "
                f"{_num(pulls.get(name), 0):>9} {_weight(chosen.get(name)):>10}"
            )
        if not names:
            out.append("(no variants reported yet)")
        return out

    def _dead_letter_lines(self, agents: list[Target]) -> list[str]:
        totals: dict[str, float] = {}
        rates: dict[str, float] = {}
        for t in agents:
            if not t.history:
                continue
            for reason, n in by_label(t.latest, "streamer_dead_letters_total", "reason").items():
                totals[reason] = totals.get(reason, 0.0) + n
            for reason, r in rates_by_label(
                t.history, "streamer_dead_letters_total", "reason"
            ).items():
                rates[reason] = rates.get(reason, 0.0) + r
        shown = [
            f"{reason} {totals[reason]:,.0f} ({_num(rates.get(reason), 1)}/s)"
            for reason in sorted(totals, key=lambda r: -totals[r])
            if totals[reason] > 0
        ]
        return [f"dead letters   {'  '.join(shown) if shown else 'none'}"]

    def _drift_lines(self, agents: list[Target]) -> list[str]:
        worst: dict[str, float] = {}
        for t in agents:
            for lab, v in select_samples(t.latest, "streamer_feature_drift_psi").items():
                feature = dict(lab).get("feature", "?")
                worst[feature] = max(v, worst.get(feature, v))
        ranked = sorted(worst.items(), key=lambda kv: -kv[1])[:6]
        shown = "  ".join(f"{f} {v:.3f}" for f, v in ranked) if ranked else "-"
        return [f"feature drift  {shown}"]

    def _controller_lines(self, controllers: list[Target]) -> list[str]:
        out = []
        for t in controllers:
            if t.error is not None or not t.history:
                out.append(f"controller     {t.address}  down: {t.error or 'waiting'}")
                continue
            s = t.latest
            records = rate(t.history, "streamer_controller_records_total")
            published = value(s, "streamer_controller_control_records_total")
            pending = value(s, "streamer_controller_pending_decisions")
            lag = value(s, "streamer_controller_lag")
            out.append(
                f"controller     {t.address}  pending {_num(pending, 0)}  lag {_num(lag, 0)}"
                f"  records/s {_num(records)}  control records {_num(published, 0)}"
            )
        return out


def _row(label: str, line: AgentLine) -> str:
    return (
        f"{label[:LABEL]:<{LABEL}} {_num(line.events):>10} {_ms(line.p50):>8} {_ms(line.p99):>8} "
        f"{_num(line.batch):>7} {_num(line.dead):>8} {_num(line.lag, 0):>9}"
    )


def _reward(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _weight(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


# -- the terminal -------------------------------------------------------------------------
_ENTER = "\x1b[?1049h\x1b[?25l"  # the alternate screen, cursor hidden
_LEAVE = "\x1b[?25h\x1b[?1049l"


@contextlib.contextmanager
def _keys(stream: IO[str]) -> Iterator[Callable[[float], str]]:
    """A function that waits up to N seconds for a key press and returns it ('' if none).
    On a terminal the keys come one at a time without echo; elsewhere it only waits."""
    try:
        fd = stream.fileno()
        interactive = os.isatty(fd)
    except (AttributeError, OSError, ValueError):
        interactive = False
    if not interactive:

        def wait(timeout: float) -> str:
            time.sleep(max(timeout, 0.0))
            return ""

        yield wait
        return
    import termios  # noqa: PLC0415 - POSIX terminals only
    import tty  # noqa: PLC0415

    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def key(timeout: float) -> str:
        ready, _, _ = select.select([fd], [], [], max(timeout, 0.0))
        return os.read(fd, 32).decode("utf-8", "replace") if ready else ""

    try:
        yield key
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_top(
    topology: Topology,
    targets: list[Target] | None,
    *,
    interval_s: float = 1.0,
    count: int | None = None,
    out: IO[str] | None = None,
    keys_from: IO[str] | None = None,
) -> None:
    """Show the view until `q`, Ctrl-C (KeyboardInterrupt, left to the caller) or `count`
    refreshes. Discovers targets (in the background) when `targets` is None; refreshes are
    counted (and printed, off a terminal) once the first discovery is done."""
    out = out if out is not None else sys.stdout
    keys_from = keys_from if keys_from is not None else sys.stdin
    view = View(topology.name, targets or [], interval_s)
    stop, discovered = threading.Event(), threading.Event()
    if targets is None:
        view.note = "discovering agents..."
        threading.Thread(
            target=_keep_discovering,
            args=(topology, view, stop, discovered),
            name="discover",
            daemon=True,
        ).start()
    else:
        discovered.set()
    terminal = _isatty(out)
    if terminal:
        out.write(_ENTER)
    try:
        with _keys(keys_from) as key:
            shown = 0
            while True:
                began = time.monotonic()
                ready = discovered.is_set()
                if ready:
                    view.refresh()
                if ready or terminal:
                    _draw(out, view.lines(), terminal)
                shown += ready
                if count is not None and shown >= count:
                    return
                while (left := interval_s - (time.monotonic() - began)) > 0:
                    if key(left).lower().startswith("q"):
                        return
    finally:
        stop.set()
        if terminal:
            out.write(_LEAVE)
            out.flush()


def _keep_discovering(
    topology: Topology, view: View, stop: threading.Event, discovered: threading.Event
) -> None:
    while not stop.is_set():
        try:
            found = discover(topology)
            view.set_targets(found)
            view.note = "" if found else "no running agents found (status topic and config)"
        except Exception as exc:  # shown in the view; tried again later
            view.note = f"discovery failed: {exc}"
        discovered.set()
        stop.wait(DISCOVER_EVERY_S)


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _draw(out: IO[str], lines: list[str], terminal: bool) -> None:
    if not terminal:
        out.write("\n".join(lines) + "\n\n")
        out.flush()
        return
    size = shutil.get_terminal_size()
    shown = [line[: size.columns] for line in lines[: size.lines]]
    out.write("\x1b[H" + "".join(f"{line}\x1b[K\r\n" for line in shown[:-1]))
    out.write(f"{shown[-1]}\x1b[K\x1b[J" if shown else "\x1b[J")
    out.flush()
