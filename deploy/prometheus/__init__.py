"""Prometheus's files of the deployment, and where tools and tests find its binaries."""

from __future__ import annotations

import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "prometheus.yml"
"""The scrape configuration docker-compose.yml runs (targets found by Docker's DNS)."""
ALERTS = HERE / "alerts.yml"
"""The alert rules."""
ALERT_TESTS = HERE / "alerts_test.yml"
"""`promtool test rules` unit tests of every alert."""
INSTALL = HERE / "install.sh"
"""Unpacks Debian's prometheus package's binaries when they are not on PATH."""

VERSION = "2.42.0"
"""Debian 12's Prometheus, which CI runs; docker-compose.yml pins the same release."""
ENGINE_JOB = "streamer-engine"
"""The scrape job of the agents (`streamer run`): the alerts and the dashboard use it."""
CONTROLLER_JOB = "streamer-controller"
"""The scrape job of the bandit controllers (`streamer controller`)."""


class Unavailable(RuntimeError):
    """Prometheus's binaries are not there and could not be fetched (the reason is the message)."""


def binaries() -> tuple[Path, Path]:
    """The paths of `prometheus` and `promtool`, unpacked by install.sh first if need be."""
    run = subprocess.run(
        ["bash", str(INSTALL)], capture_output=True, text=True, timeout=600, check=False
    )
    if run.returncode != 0:
        raise Unavailable((run.stderr or run.stdout).strip() or f"{INSTALL} failed")
    directory = Path(run.stdout.strip().splitlines()[-1])
    return directory / "prometheus", directory / "promtool"
