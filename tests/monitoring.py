"""Helpers of the monitoring tests (alert rules, dashboard, a real Prometheus): Prometheus's
binaries, a Prometheus server on a free port, and the series streamer's code exports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from deploy.grafana.dashboard import OUTPUT
from deploy.prometheus import Unavailable, binaries
from deploy.promql import substitute
from streamer.metrics import ControllerMetrics, Metrics

PENDING = {
    # prometheus_client's process collector (CPU, memory) is not registered in the agents' and
    # controllers' own registries yet; the dashboard's Processes row needs it.
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    # Drift gauges, being added to streamer/metrics.py.
    "streamer_feature_drift_psi",
    "streamer_prediction_drift_psi",
}
"""Series the alerts or the dashboard name that streamer's code may not export yet. Each one
is accepted only while it is not exported at all; once it is, it is checked like the rest."""

SYNTHETIC = {"up"}
"""Series Prometheus makes for every target."""

DASHBOARD: dict[str, Any] = json.loads(OUTPUT.read_text())
PANELS: list[dict[str, Any]] = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
ALL = {"engine": ".+", "controller": ".+"}
"""The dashboard's instance variables set to "All"."""


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, query with its variables set) for every query of the dashboard."""
    return [(p["title"], substitute(t["expr"], ALL)) for p in PANELS for t in p["targets"]]


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}


def registry_series(registry: CollectorRegistry) -> set[str]:
    """Every series name a registry exports, samples or not (a labelled metric that has not
    been used yet exports no sample, but is declared)."""
    return {
        metric.name + suffix
        for metric in registry.collect()
        for suffix in _SUFFIXES.get(metric.type, ("",))
    }


def code_series() -> set[str]:
    """The series an agent's and a controller's metrics declare."""
    return registry_series(Metrics().registry) | registry_series(ControllerMetrics().registry)


def unknown(names: set[str], exported: set[str]) -> set[str]:
    """Those of `names` neither exported nor allowed: pending ones pass while not exported."""
    return {n for n in names - exported - SYNTHETIC if n not in PENDING}


def prometheus_binaries() -> tuple[Path, Path]:
    """(prometheus, promtool), fetched by deploy/prometheus/install.sh if need be. Skips when
    they cannot be had, except in CI (CI=true), where that fails."""
    try:
        return binaries()
    except Unavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Prometheus is needed in CI: {exc}")
        pytest.skip(f"Prometheus is not installed and could not be fetched: {exc}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Prometheus:
    """A Prometheus server of its own: `config` is its configuration (a mapping)."""

    def __init__(self, binary: Path, config: dict[str, Any], directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path = directory / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "prometheus.log"
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            [
                str(binary),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def __enter__(self) -> Prometheus:
        try:
            wait_for(self._ready, "Prometheus to be ready")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def _ready(self) -> bool:
        assert self._process.poll() is None, f"Prometheus exited:\n{self.log()}"
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/PATH: its `data`, or AssertionError with Prometheus's error."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        assert body["status"] == "success", f"{path} {params}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector result: [{"metric": {...}, "value": [ts, "v"]}, ...]."""
        data = self.api("query", query=expr)
        result = data["result"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        assert isinstance(result, list)
        return result

    def value(self, expr: str) -> float | None:
        """The single value of a query (None without a result)."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr}: {result}"
        return float(result[0]["value"][1]) if result else None

    def by(self, expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}
