"""A real Prometheus (Debian's 2.42, fetched by deploy/prometheus/install.sh) scrapes two agents
and a bandit controller on the session's broker, with the scrape jobs of
deploy/prometheus/prometheus.yml and the rules of alerts.yml: the contract series are there
with the values that were produced, every dashboard query evaluates and names only series
the processes export, every rule evaluates, and a rejected control record fires its alert."""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.prometheus import ALERTS, CONFIG, CONTROLLER_JOB, ENGINE_JOB
from deploy.promql import series_names
from streamer.config import Topology, load_topology
from streamer.demo.data import generate_transactions
from streamer.kafka.admin import create_topics
from streamer.testing import RunningAgent, RunningController, produce, unique
from tests.conftest import SCHEMAS, keyed_transactions
from tests.integration.test_bandit import Rewarder
from tests.monitoring import (
    PANELS,
    PENDING,
    SYNTHETIC,
    Prometheus,
    panel_queries,
    prometheus_binaries,
    wait_for,
)

pytestmark = pytest.mark.integration

SERVED = 300
UNDECODABLE = 7
EMPTY = 3
RATES = {"a": 1.0, "b": 0.0}
"""Every output of `a` earns 1, of `b` 0: the mean rewards are exactly these."""


@dataclass
class Deployment:
    topology: Topology
    agents: list[RunningAgent]
    controller: RunningController
    rewarder: Rewarder
    prometheus: Prometheus


def write_topology(kafka: str, models: dict[str, Path], directory: Path) -> Topology:
    name = unique("prom")
    spec: dict[str, Any] = {
        "name": name,
        "kafka": {"bootstrap_servers": kafka},
        "input": {
            "topic": f"{name}-in",
            "format": "avro",
            "schema": str(SCHEMAS / "transaction.avsc"),
        },
        "features": ["amount", "age_days", "hour", "merchant_risk"],
        "batching": {"max_batch_size": 64, "max_wait_ms": 20},
        "variants": [
            {"name": "a", "model": str(models["fraud_v2"]), "weight": 1.0},
            {"name": "b", "model": str(models["fraud_v3"]), "weight": 1.0},
        ],
        "output": {"topic": f"{name}-out", "format": "json"},
        "lake": {"topic": f"{name}-lake", "format": "json"},
        "dead_letter": {"topic": f"{name}-dlq"},
        "routing": {"strategy": "bandit", "control_topic": f"{name}-control"},
        "bandit": {
            "feedback_topic": f"{name}-feedback",
            "update_interval_s": 1,
            "min_rewards": 50,
            "seed": 7,
            "metrics_port": 0,
        },
        "metrics": {"port": 0},
        "topics": {"partitions": 2},
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    topology = load_topology(path)
    create_topics(topology)
    return topology


def scrape_config(targets: dict[str, list[str]], rules: Path) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with these targets instead of Docker's DNS, scraping
    and evaluating every second."""
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(rules)]
    for job in config["scrape_configs"]:
        for key in [k for k in job if k.endswith("_sd_configs")]:
            del job[key]
        job["static_configs"] = [{"targets": targets.pop(job["job_name"])}]
    assert not targets, f"jobs missing from {CONFIG}: {sorted(targets)}"
    return config


def ready(port: int | None) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def deployment(
    kafka: str, demo_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    binary = prometheus_binaries()[0]
    directory = tmp_path_factory.mktemp("prometheus")
    topology = write_topology(kafka, demo_models, directory)
    with contextlib.ExitStack() as stack:
        agents = [stack.enter_context(RunningAgent(topology)) for _ in range(2)]
        controller = stack.enter_context(RunningController(topology))

        def listening() -> bool:
            running = [a.agent.metrics_port for a in agents]
            return all(running) and controller.controller.metrics_port is not None

        wait_for(listening, "the metrics endpoints")
        # Both agents in the group before any event: an agent that gets a partition in a
        # rebalance after the last event reports no lag for it until it consumes one.
        wait_for(lambda: all(ready(a.agent.metrics_port) for a in agents), "both agents to join")
        targets = {
            ENGINE_JOB: [f"127.0.0.1:{a.agent.metrics_port}" for a in agents],
            CONTROLLER_JOB: [f"127.0.0.1:{controller.controller.metrics_port}"],
        }
        prometheus = stack.enter_context(
            Prometheus(binary, scrape_config(targets, ALERTS), directory)
        )
        rewarder = stack.enter_context(Rewarder(kafka, topology, RATES))
        events = generate_transactions(SERVED, seed=11)
        poison: list[tuple[bytes | None, bytes | None]] = [
            (f"bad-{i}".encode(), b"\x00not avro at all") for i in range(UNDECODABLE)
        ] + [(f"empty-{i}".encode(), None) for i in range(EMPTY)]
        produce(kafka, topology.input.topic, keyed_transactions(events) + poison)

        def scraped_thrice() -> bool:  # so that rate() has samples to work with
            counts = prometheus.by('count_over_time(up{job=~"streamer-.+"}[1m])', "instance")
            return len(counts) == 3 and min(counts.values()) >= 3

        # Prometheus 2.42 applies discovered targets after 5 s (discovery's update throttle).
        wait_for(scraped_thrice, "three scrapes of every target")
        yield Deployment(topology, agents, controller, rewarder, prometheus)


def up(prometheus: Prometheus, job: str) -> dict[str, float]:
    return prometheus.by(f'up{{job="{job}"}}', "instance")


def test_prometheus_scrapes_every_agent_and_the_controller(deployment: Deployment) -> None:
    p = deployment.prometheus

    def all_up() -> bool:
        return list(up(p, ENGINE_JOB).values()) == [1.0, 1.0] and list(
            up(p, CONTROLLER_JOB).values()
        ) == [1.0]

    wait_for(all_up, "every target to be scraped")
    targets = p.api("targets")["activeTargets"]
    assert sorted(t["labels"]["job"] for t in targets) == [CONTROLLER_JOB, ENGINE_JOB, ENGINE_JOB]
    assert all(t["health"] == "up" for t in targets), targets


def test_the_contract_series_agree_with_what_was_produced(deployment: Deployment) -> None:
    p, agents = deployment.prometheus, deployment.agents
    engine, controller = f'job="{ENGINE_JOB}"', f'job="{CONTROLLER_JOB}"'
    consumed = SERVED + UNDECODABLE + EMPTY

    expected = {
        f"sum(streamer_events_consumed_total{{{engine}}})": consumed,
        f'sum(streamer_predictions_total{{{engine},shadow="false"}})': SERVED,
        f"sum(streamer_dead_letters_total{{{engine}}})": UNDECODABLE + EMPTY,
        f'sum(streamer_controller_rewards_total{{{controller},result="joined"}})': SERVED,
        f"sum(streamer_controller_control_records_total{{{controller}}}) > bool 0": 1,
        f"count(streamer_consumer_lag{{{engine}}})": 2,  # refreshed every 2 s
    }
    seen: dict[str, float | None] = {}

    def settled() -> bool:
        seen.update({expr: p.value(expr) for expr in expected})
        return seen == expected

    with contextlib.suppress(AssertionError):
        wait_for(settled, "Prometheus to see every event served and rewarded", timeout_s=60)
    assert seen == expected

    # The agents: what went in and out, split between the two processes.
    per_agent = p.by(f"streamer_events_consumed_total{{{engine}}}", "instance")
    assert len(per_agent) == 2 and sum(per_agent.values()) == consumed
    assert sum(a.agent.stats.served for a in agents) == SERVED
    by_variant = p.by(
        f'sum by (variant) (streamer_predictions_total{{{engine},shadow="false"}})', "variant"
    )
    assert set(by_variant) <= {"a", "b"} and sum(by_variant.values()) == SERVED
    in_process = {
        v: sum(
            a.agent.metrics.value("streamer_predictions_total", variant=v, shadow="false")
            for a in agents
        )
        for v in by_variant
    }
    assert by_variant == in_process
    reasons = p.by(f"sum by (reason) (streamer_dead_letters_total{{{engine}}})", "reason")
    assert reasons == {"undecodable": UNDECODABLE, "empty_value": EMPTY}
    assert p.value(f"sum(streamer_batch_size_sum{{{engine}}})") == consumed
    assert p.value(f"sum(streamer_end_to_end_seconds_count{{{engine}}})") == SERVED
    assert p.value(f'sum(streamer_end_to_end_seconds_bucket{{{engine},le="+Inf"}})') == SERVED
    inference = p.by(f"sum by (variant) (streamer_inference_seconds_count{{{engine}}})", "variant")
    assert set(inference) == set(by_variant)
    lag = p.query(f"streamer_consumer_lag{{{engine}}}")
    assert sorted(r["metric"]["partition"] for r in lag) == ["0", "1"]  # one owner each
    assert all(float(r["value"][1]) == 0 for r in lag)
    weights = p.query(f"streamer_variant_weight{{{engine}}}")
    assert {r["metric"]["variant"] for r in weights} == {"a", "b"}
    for total in p.by(
        f"sum by (instance) (streamer_variant_weight{{{engine}}})", "instance"
    ).values():
        assert total == pytest.approx(1.0)
    models = p.query(f"streamer_model_info{{{engine}}}")
    assert {(r["metric"]["instance"], r["metric"]["variant"]) for r in models} == {
        (i, v) for i in per_agent for v in ("a", "b")
    }
    assert all(r["value"][1] == "1" for r in models)
    assert p.value(f'sum(streamer_control_records_total{{{engine},result="applied"}})')

    # The controller: every reward joined, by variant; evidence and weights.
    sent = deployment.rewarder.sent
    joined = p.by(
        f'sum by (variant) (streamer_controller_rewards_total{{{controller},result="joined"}})',
        "variant",
    )
    assert joined == {v: float(n) for v, n in sent.items()}
    records = p.by(f"sum by (topic) (streamer_controller_records_total{{{controller}}})", "topic")
    assert records == {"lake": SERVED, "feedback": SERVED}
    pulls = p.by(f"streamer_controller_pulls{{{controller}}}", "variant")
    assert pulls == {v: float(sent.get(v, 0)) for v in ("a", "b")}
    means = p.by(f"streamer_controller_mean_reward{{{controller}}}", "variant")
    assert {v: means[v] for v in sent} == {v: RATES[v] for v in sent}
    published = p.by(f"streamer_controller_weight{{{controller}}}", "variant")
    assert set(published) == {"a", "b"} and sum(published.values()) == pytest.approx(1.0)
    assert p.value(f"streamer_controller_pending_decisions{{{controller}}}") == 0


def exported(prometheus: Prometheus) -> set[str]:
    """The series names the scraped processes declare (their metadata: TYPE lines, with or
    without samples), per Prometheus."""
    names: set[str] = set()
    for entry in prometheus.api("targets/metadata", match_target='{job=~"streamer-.+"}'):
        family, kind = entry["metric"], entry["type"]
        names.add(family)
        if kind in {"histogram", "summary"}:
            names |= {family + s for s in ("_bucket", "_count", "_sum")}
    return names


def test_every_dashboard_query_evaluates_and_names_only_exported_series(
    deployment: Deployment,
) -> None:
    p = deployment.prometheus
    names = exported(p)
    assert "streamer_events_consumed_total" in names and "streamer_controller_weight" in names
    missing: set[str] = set()
    answered: dict[str, bool] = {}
    for title, expr in panel_queries():
        result = p.query(expr)  # fails on any evaluation error
        answered[title] = answered.get(title, False) or bool(result)
        used = series_names(expr)
        missing |= used - names - SYNTHETIC
    assert missing <= PENDING, f"not exported by the engine or the controller: {missing - PENDING}"
    empty_panels = {title for title, any_data in answered.items() if not any_data}
    # Nothing in this run makes these series: no drift profile, no shadow, no failure.
    allowed_empty = {"Feature drift (PSI)", "Prediction drift (PSI)", "Shadows, lake and commits"}
    if missing & {"process_cpu_seconds_total", "process_resident_memory_bytes"}:
        allowed_empty |= {"CPU", "Memory"}
    assert empty_panels <= allowed_empty, f"panels without data: {empty_panels - allowed_empty}"
    assert {p["title"] for p in PANELS} == set(answered)


def test_every_rule_evaluates_and_a_healthy_run_fires_none(deployment: Deployment) -> None:
    p = deployment.prometheus

    def rules() -> list[dict[str, Any]]:
        return [r for g in p.api("rules")["groups"] for r in g["rules"]]

    wait_for(lambda: all(r["health"] != "unknown" for r in rules()), "every rule to be evaluated")
    for rule in rules():
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
    firing = [a for a in p.api("alerts")["alerts"] if a["state"] == "firing"]
    assert not firing, firing


def test_a_rejected_control_record_fires_its_alert_on_every_agent(deployment: Deployment) -> None:
    p, topology = deployment.prometheus, deployment.topology
    assert topology.routing.control_topic is not None
    bootstrap = topology.kafka.bootstrap_servers
    produce(bootstrap, topology.routing.control_topic, [(topology.name.encode(), b"{not json")])

    def firing() -> set[str]:
        return {
            a["labels"]["instance"]
            for a in p.api("alerts")["alerts"]
            if a["labels"]["alertname"] == "StreamerControlRecordRejected"
            and a["state"] == "firing"
        }

    wait_for(lambda: len(firing()) == 2, "StreamerControlRecordRejected on both agents")
    assert firing() == {f"127.0.0.1:{a.agent.metrics_port}" for a in deployment.agents}
