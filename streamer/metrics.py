"""Prometheus metrics (docs/contracts.md lists them) and the /metrics, /healthz, /readyz server."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import orjson
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from streamer.errors import StreamerError

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Registry:
    """A registry of its own (several agents or controllers can share a process), read back
    by name for stats and tests."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value, summed over the labels not given (0 when absent)."""
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """A counter's values keyed by one label (e.g. dead letters by reason)."""
        values: dict[str, float] = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == name and label in sample.labels:
                    key = sample.labels[label]
                    values[key] = values.get(key, 0.0) + sample.value
        return values


class Metrics(Registry):
    """One agent's metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes
        self.events_consumed = Counter(
            "streamer_events_consumed", "Input events consumed.", registry=r
        )
        self.predictions = Counter(
            "streamer_predictions",
            "Predictions made, per variant; shadow=true were not served.",
            ["variant", "shadow"],
            registry=r,
        )
        self.dead_letters = Counter(
            "streamer_dead_letters",
            "Events sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "streamer_batch_size", "Events per micro-batch.", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "streamer_inference_seconds",
            "Wall time of one ONNX call for a batch, per variant.",
            ["variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "streamer_end_to_end_seconds",
            "Event timestamp to output produce.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.variant_weight = Gauge(
            "streamer_variant_weight",
            "Share of served traffic routed to a variant.",
            ["variant"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "streamer_consumer_lag",
            "Messages behind the partition's high watermark.",
            ["partition"],
            registry=r,
        )
        self.commit_failures = Counter(
            "streamer_commit_failures",
            "Asynchronous offset commits the group coordinator refused (a later one supersedes).",
            registry=r,
        )
        self.lake_dropped = Counter(
            "streamer_lake_records_dropped",
            "Lake records not written, by reason (the event itself was served).",
            ["reason"],
            registry=r,
        )
        self.shadow_errors = Counter(
            "streamer_shadow_errors",
            "Events a shadow variant's model failed to score (served traffic is unaffected).",
            ["variant"],
            registry=r,
        )
        self.shadow_skipped = Counter(
            "streamer_shadow_skipped",
            "Events a shadow variant did not score because the batch's shadow budget ran out.",
            ["variant"],
            registry=r,
        )
        self.control_records = Counter(
            "streamer_control_records",
            "Control records read: applied, rejected (invalid; the last good one stays), or "
            "ignored (the controller's, under routing.strategy static).",
            ["result"],
            registry=r,
        )
        self.model_reloads = Counter(
            "streamer_model_reloads",
            "Model versions swapped in (applied) or refused (rejected; the old one serves on).",
            ["variant", "result"],
            registry=r,
        )
        self.transactions = Counter(
            "streamer_transactions",
            "Kafka transactions of guarantee exactly_once: committed, or aborted (their "
            "events are served again).",
            ["result"],
            registry=r,
        )
        self.model_info = Gauge(
            "streamer_model_info",
            "The model a variant serves (value is always 1).",
            ["variant", "version", "sha256"],
            registry=r,
        )
        # Drift from the reference profile (drift.profile; see streamer/drift.py), over each
        # served variant's sliding window; set once the window holds drift.min_events.
        self.feature_drift_psi = Gauge(
            "streamer_feature_drift_psi",
            "Population stability index of a feature's live distribution (the rows a served "
            "variant scored) against the reference profile.",
            ["feature", "variant"],
            registry=r,
        )
        self.prediction_drift_psi = Gauge(
            "streamer_prediction_drift_psi",
            "Population stability index of a served variant's main output against the "
            "reference profile.",
            ["variant"],
            registry=r,
        )
        self.feature_drift_mean_shift = Gauge(
            "streamer_feature_drift_mean_shift",
            "(live mean - reference mean) / reference standard deviation of a feature.",
            ["feature", "variant"],
            registry=r,
        )
        self.prediction_drift_mean_shift = Gauge(
            "streamer_prediction_drift_mean_shift",
            "(live mean - reference mean) / reference standard deviation of a served "
            "variant's main output.",
            ["variant"],
            registry=r,
        )
        self.drift_window_events = Gauge(
            "streamer_drift_window_events",
            "Events in a served variant's drift window.",
            ["variant"],
            registry=r,
        )


class ControllerMetrics(Registry):
    """The bandit controller's metrics (`streamer_controller_*`), on its own port."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        ProcessCollector(registry=r)
        self.rewards = Counter(
            "streamer_controller_rewards",
            "Rewards and decisions by variant and result: joined, defaulted, expired, unknown, "
            "late, duplicate, evicted, invalid (variant is empty where none is known).",
            ["variant", "result"],
            registry=r,
        )
        self.records = Counter(
            "streamer_controller_records",
            "Lake and feedback records read (replayed ones after a restart included).",
            ["topic"],
            registry=r,
        )
        self.pulls = Gauge(
            "streamer_controller_pulls",
            "Rewarded decisions per variant in the evidence the weights come from (decayed), "
            "merged over every partition.",
            ["variant"],
            registry=r,
        )
        self.mean_reward = Gauge(
            "streamer_controller_mean_reward",
            "Mean reward per variant in that evidence.",
            ["variant"],
            registry=r,
        )
        self.weight = Gauge(
            "streamer_controller_weight",
            "The weight the controller last chose (and published) per variant.",
            ["variant"],
            registry=r,
        )
        self.pending = Gauge(
            "streamer_controller_pending_decisions",
            "Decisions of this process's partitions waiting for a reward.",
            registry=r,
        )
        self.lag = Gauge(
            "streamer_controller_lag",
            "Records behind the end of each assigned lake and feedback partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.control_records = Counter(
            "streamer_controller_control_records",
            "Control records this controller published.",
            registry=r,
        )
        self.checkpoints = Counter(
            "streamer_controller_checkpoints",
            "Partition checkpoints written (learned state and input offsets).",
            registry=r,
        )


def observe_many(histogram: Histogram, amounts: np.ndarray) -> None:
    """Observe every value of `amounts` at once: the same result as one `observe` per value.

    Per-event observations were a tenth of the engine's time; this counts a batch per bucket
    with numpy and increments each bucket once. It reaches into prometheus_client's
    Histogram internals (`_upper_bounds`, `_buckets`, `_sum`, stable since 0.4), which a
    unit test checks against `observe`.
    """
    if amounts.size == 0:
        return
    bounds = histogram._upper_bounds  # noqa: SLF001 - ascending, the last one +Inf
    slots = np.searchsorted(np.asarray(bounds), amounts, side="left")  # first bound >= value
    counts = np.bincount(slots, minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=False):  # noqa: SLF001
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(amounts.sum()))  # noqa: SLF001


def serve_metrics(
    metrics: Registry,
    port: int | None,
    host: str,
    *,
    healthy: Callable[[], bool],
    ready: Readiness,
    where: str,
) -> MetricsServer | None:
    """Start /metrics /healthz /readyz on `port` (None: none); a port that cannot be bound
    is a StreamerError naming `where` (the file and key that chose it)."""
    if port is None:
        return None
    try:
        server = MetricsServer(metrics, port, healthy, ready, host)
    except OSError as exc:
        raise StreamerError(f"{where}: cannot listen on {port}: {exc.strerror}") from None
    return server.start()


Readiness = Callable[[], str | None]
"""None when ready; else the reason it is not, for /readyz."""


class MetricsServer:
    """Serves /metrics, /healthz (the loop is alive) and /readyz (JSON: ready, or why not)."""

    def __init__(
        self,
        metrics: Registry,
        port: int,
        healthy: Callable[[], bool],
        ready: Readiness,
        host: str = "127.0.0.1",
    ) -> None:
        handler = _handler(metrics, healthy, ready)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(
    metrics: Registry, healthy: Callable[[], bool], ready: Readiness
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                good = healthy()
                self._send(200 if good else 503, b"ok\n" if good else b"stalled\n")
            elif path == "/readyz":
                reason = ready()
                body = {"ready": True} if reason is None else {"ready": False, "reason": reason}
                self._send(503 if reason else 200, orjson.dumps(body), "application/json")
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes every few seconds would flood the agent's log

    return Handler
