"""docker-compose.yml agrees with the code it runs: the Kafka release, listeners and ports,
the `streamer` commands and the files they name inside the image, and the monitoring
services (Prometheus and Grafana) with the files of deploy/ they mount.

There is no Docker engine in CI, so the file is parsed and cross-checked against the code.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import posixpath
import re
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import typer
import yaml

import deploy.prometheus as prometheus_files
from deploy.grafana import dashboard
from streamer.agent import DRAIN_TIMEOUT_S
from streamer.cli import app
from streamer.config import BOOTSTRAP_ENV, METRICS_HOST_ENV, KafkaSettings, load_topology
from streamer.demo.train import DEMO_DIRECTORIES, DEMO_MODELS
from streamer.kafka.local import KAFKA_VERSION

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
KAFKA_ENV: dict[str, str] = SERVICES["kafka"]["environment"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
COPIES: list[tuple[str, str]] = re.findall(r"^COPY (\S+/) (/\S+)$", DOCKERFILE, re.MULTILINE)
(IMAGE_CMD,) = re.findall(r"^CMD (\[.*\])$", DOCKERFILE, re.MULTILINE)
FRAUD_PATH = ROOT / "topologies" / "fraud.yaml"
FRAUD = load_topology(FRAUD_PATH)


def _listeners(setting: str) -> dict[str, tuple[str, int]]:
    """A Kafka listeners setting (`NAME://host:port,...`) as {name: (host, port)}."""
    found = re.findall(r"(\w+)://([^:,]*):(\d+)", KAFKA_ENV[setting])
    return {name: (host, int(port)) for name, host, port in found}


def _listening_port(bootstrap: str) -> int:
    """The port the broker listens on behind an advertised `host:port` (fails if none is)."""
    host, _, port = bootstrap.rpartition(":")
    advertised = _listeners("KAFKA_ADVERTISED_LISTENERS").items()
    (name,) = [n for n, address in advertised if address == (host, int(port))]
    return _listeners("KAFKA_LISTENERS")[name][1]


def _parse(argv: list[str]) -> dict[str, Any]:
    """The parameters `streamer argv...` would run with; raises if it is no valid command line."""
    command: Any = typer.main.get_command(app)
    rest = list(argv)
    while hasattr(command, "commands"):  # a group: the next word names one of its commands
        command = command.commands[rest.pop(0)]  # KeyError or IndexError: no such command
    return dict(command.make_context(command.name, rest).params)


def _in_repo(image_path: PurePosixPath) -> Path | None:
    """The repo file that a Dockerfile `COPY dir/ /abs/dir/` puts at `image_path`."""
    for source, dest in COPIES:
        if image_path.is_relative_to(dest):
            return ROOT / source / image_path.relative_to(dest)
    return None


def _in_image(repo_path: Path, topology_in_image: PurePosixPath) -> PurePosixPath:
    """Where a path of the repo's fraud.yaml resolves when the image's copy is loaded."""
    relative = os.path.relpath(repo_path, FRAUD_PATH.parent)
    return PurePosixPath(posixpath.normpath(topology_in_image.parent / relative))


def test_kafka_is_the_release_streamer_kafka_start_runs() -> None:
    assert SERVICES["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"


def test_the_default_bootstrap_reaches_kafka_from_the_host() -> None:
    bootstrap = KafkaSettings().bootstrap_servers
    published = f"{bootstrap.rpartition(':')[2]}:{_listening_port(bootstrap)}"
    assert published in SERVICES["kafka"]["ports"]


@pytest.mark.parametrize("service", ["topics", "engine", "controller"])
def test_containers_bootstrap_from_an_advertised_listener(service: str) -> None:
    bootstrap = SERVICES[service]["environment"][BOOTSTRAP_ENV]
    host, _, port = bootstrap.rpartition(":")
    assert host == SERVICES["kafka"]["hostname"] and _listening_port(bootstrap) == int(port)


def test_kafka_votes_for_itself_and_checks_its_own_health() -> None:
    node, _, voter = KAFKA_ENV["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    listening = _listeners("KAFKA_LISTENERS")
    controller_port = listening[KAFKA_ENV["KAFKA_CONTROLLER_LISTENER_NAMES"]][1]
    assert node == KAFKA_ENV["KAFKA_NODE_ID"]
    assert voter == f"{SERVICES['kafka']['hostname']}:{controller_port}"
    test = SERVICES["kafka"]["healthcheck"]["test"]
    asked = test[test.index("--bootstrap-server") + 1].rpartition(":")[2]
    assert int(asked) in {port for _, port in listening.values()}


def test_the_image_entrypoint_is_the_streamer_cli() -> None:
    (entrypoint,) = re.findall(r"^ENTRYPOINT (\[.*\])$", DOCKERFILE, re.MULTILINE)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[json.loads(entrypoint)[0]] == "streamer.cli:main"


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(SERVICES["topics"]["command"], id="topics"),
        pytest.param(SERVICES["engine"]["command"], id="engine"),
        pytest.param(SERVICES["controller"]["command"], id="controller"),
        pytest.param(json.loads(IMAGE_CMD), id="Dockerfile CMD"),
    ],
)
def test_commands_run_the_image_copy_of_the_fraud_topology(argv: list[str]) -> None:
    assert _in_repo(PurePosixPath(_parse(argv)["topology"])) == FRAUD_PATH


@pytest.mark.parametrize("service", ["engine", "controller"])
def test_scraped_services_listen_on_every_interface(service: str) -> None:
    assert SERVICES[service]["environment"][METRICS_HOST_ENV] == "0.0.0.0"


def test_the_controller_runs_and_exposes_its_metrics_port() -> None:
    argv = SERVICES["controller"]["command"]
    assert argv[0] == "controller" and "topology" in _parse(argv)
    assert FRAUD.bandit is not None
    assert SERVICES["controller"]["ports"] == [str(FRAUD.bandit.metrics_port)]
    probe = " ".join(SERVICES["controller"]["healthcheck"]["test"])
    assert f"localhost:{FRAUD.bandit.metrics_port}/healthz" in probe


def test_the_engine_finds_its_models_and_input_schema_in_the_image() -> None:
    in_image = PurePosixPath(_parse(SERVICES["engine"]["command"])["topology"])
    (trained,) = re.findall(r"^RUN python -m streamer\.demo\.train (\S+)$", DOCKERFILE, re.M)
    for variant in FRAUD.variants:
        model = _in_image(variant.model, in_image)
        known = model.stem in DEMO_MODELS or model.name in DEMO_DIRECTORIES
        assert model.parent == PurePosixPath(trained) and known, model
    assert FRAUD.input.schema_ is not None
    schema = _in_repo(_in_image(FRAUD.input.schema_, in_image))
    assert schema == FRAUD.input.schema_ and schema.is_file()


def test_every_engine_replica_exposes_the_metrics_port() -> None:
    # Container port only: Docker picks a host port per replica, so --scale does not collide.
    assert SERVICES["engine"]["ports"] == [str(FRAUD.metrics.port)]


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1)])
def test_the_engine_healthcheck_fails_when_healthz_does(status: int, exit_code: int) -> None:
    test = SERVICES["engine"]["healthcheck"]["test"]
    url = f"http://localhost:{FRAUD.metrics.port}/healthz"
    assert test[:3] == ["CMD", "python", "-c"] and url in test[3]

    class Healthz(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/healthz" else 404)
            self.end_headers()

    with HTTPServer(("127.0.0.1", 0), Healthz) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        script = test[3].replace(url, f"http://127.0.0.1:{server.server_address[1]}/healthz")
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, check=False)
        server.shutdown()
    assert run.returncode == exit_code, run.stderr


def test_the_engine_gets_time_to_drain_before_sigkill() -> None:
    grace = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", SERVICES["engine"]["stop_grace_period"])
    assert grace is not None
    assert 60 * int(grace[1] or 0) + int(grace[2] or 0) >= DRAIN_TIMEOUT_S


# -- monitoring: Prometheus and Grafana ---------------------------------------------------------

PROMETHEUS_CONFIG: dict[str, Any] = yaml.safe_load(prometheus_files.CONFIG.read_text())
GRAFANA_DATASOURCES = ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml"
GRAFANA_DASHBOARDS = ROOT / "deploy/grafana/provisioning/dashboards/streamer.yml"


def _mounts(service: str) -> dict[str, Path]:
    """A service's bind mounts of repo files, as {path in the container: path in the repo}."""
    found = {}
    for volume in SERVICES[service]["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            found[target] = (ROOT / source).resolve()
    return found


def _option(service: str, name: str) -> str:
    arguments: list[str] = SERVICES[service]["command"]
    (value,) = [a.split("=", 1)[1] for a in arguments if a.startswith(f"{name}=")]
    return value


def test_prometheus_is_the_release_the_tests_run() -> None:
    assert SERVICES["prometheus"]["image"] == f"prom/prometheus:v{prometheus_files.VERSION}"


def test_prometheus_runs_the_repo_configuration_and_rules() -> None:
    mounts = _mounts("prometheus")
    config = PurePosixPath(_option("prometheus", "--config.file"))
    assert mounts[str(config)] == prometheus_files.CONFIG
    for rules in PROMETHEUS_CONFIG["rule_files"]:
        assert mounts[str(config.parent / rules)] == prometheus_files.ALERTS


@pytest.mark.parametrize(
    ("job", "service"),
    [(prometheus_files.ENGINE_JOB, "engine"), (prometheus_files.CONTROLLER_JOB, "controller")],
)
def test_prometheus_finds_every_replica_by_the_service_name(job: str, service: str) -> None:
    (scrape,) = [s for s in PROMETHEUS_CONFIG["scrape_configs"] if s["job_name"] == job]
    (dns,) = scrape["dns_sd_configs"]
    # Docker's DNS answers a service name with an A record per container: --scale adds targets.
    assert dns["names"] == [service] and dns["type"] == "A"
    assert SERVICES[service]["ports"] == [str(dns["port"])]  # the container port of each replica
    assert FRAUD.bandit is not None
    expected = FRAUD.metrics.port if service == "engine" else FRAUD.bandit.metrics_port
    assert dns["port"] == expected


def test_grafana_reads_the_prometheus_service() -> None:
    (source,) = yaml.safe_load(GRAFANA_DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"]
    host, _, port = source["url"].removeprefix("http://").partition(":")
    assert host == "prometheus" and f"{port}:{port}" in SERVICES["prometheus"]["ports"]
    scrape = PROMETHEUS_CONFIG["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape


def test_grafana_provisions_the_dashboard_of_deploy_grafana() -> None:
    mounts = _mounts("grafana")
    provisioning = mounts["/etc/grafana/provisioning"]
    assert GRAFANA_DATASOURCES.is_relative_to(provisioning)
    assert GRAFANA_DASHBOARDS.is_relative_to(provisioning)
    (provider,) = yaml.safe_load(GRAFANA_DASHBOARDS.read_text())["providers"]
    assert mounts[provider["options"]["path"]] == dashboard.OUTPUT.parent
    environment = SERVICES["grafana"]["environment"]
    home = PurePosixPath(environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert mounts[str(home.parent)] / home.name == dashboard.OUTPUT


def test_grafana_is_the_release_the_dashboard_is_built_for() -> None:
    sdk = importlib.metadata.version("grafana-foundation-sdk").split("!")[-1]
    image = SERVICES["grafana"]["image"]
    assert image.startswith("grafana/grafana:")
    release = image.rpartition(":")[2]
    assert release.split(".")[:2] == sdk.split(".")[:2]
