"""deploy/prometheus: promtool accepts the configuration and the rules, every alert's unit tests
pass (`promtool test rules`) and show it firing and staying quiet, and the rules name only
series streamer exports, in the scrape jobs of the configuration."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from deploy.grafana.dashboard import DEAD_LETTER_SHARE, DRIFT_PSI, LATENCY_BUDGET_S
from deploy.prometheus import ALERT_TESTS, ALERTS, CONFIG, CONTROLLER_JOB, ENGINE_JOB
from deploy.promql import series_names
from tests.monitoring import code_series, prometheus_binaries, unknown

RULES: list[dict[str, Any]] = [
    rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
]
ALERT_RULES = {rule["alert"]: rule for rule in RULES if "alert" in rule}
CASES: list[dict[str, Any]] = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
SCRAPE_JOBS = {job["job_name"] for job in yaml.safe_load(CONFIG.read_text())["scrape_configs"]}


@pytest.fixture(scope="module")
def promtool() -> Path:
    return prometheus_binaries()[1]


def run(promtool: Path, *args: str) -> str:
    done = subprocess.run(
        [str(promtool), *args],
        cwd=ALERTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_accepts_the_rules(promtool: Path) -> None:
    out = run(promtool, "check", "rules", ALERTS.name)
    assert f"SUCCESS: {len(RULES)} rules found" in out


def test_promtool_accepts_the_configuration_and_its_rule_files(promtool: Path) -> None:
    out = run(promtool, "check", "config", CONFIG.name)
    assert "SUCCESS" in out and "1 rule files found" in out


def test_every_alert_passes_its_unit_tests(promtool: Path) -> None:
    assert "SUCCESS" in run(promtool, "test", "rules", ALERT_TESTS.name)


def test_the_unit_tests_load_the_rules_of_the_deployment() -> None:
    assert yaml.safe_load(ALERT_TESTS.read_text())["rule_files"] == [ALERTS.name]


@pytest.mark.parametrize("alert", sorted(ALERT_RULES))
def test_each_alert_is_tested_firing_and_quiet(alert: str) -> None:
    checks = [
        check for case in CASES for check in case["alert_rule_test"] if check["alertname"] == alert
    ]
    assert any(check["exp_alerts"] for check in checks), f"{alert} is never seen firing"
    assert any(not check["exp_alerts"] for check in checks), f"{alert} is never seen quiet"


def test_the_issue_asks_for_these_alerts() -> None:
    assert set(ALERT_RULES) >= {
        "StreamerEngineDown",
        "StreamerNoProgress",
        "StreamerDeadLetterRateHigh",
        "StreamerEndToEndLatencyHigh",
        "StreamerNonFiniteOutputs",
        "StreamerModelReloadRejected",
        "StreamerControlRecordRejected",
        "StreamerControllerNotPublishing",
        "StreamerFeatureDrift",
        "StreamerPredictionDrift",
    }


@pytest.mark.parametrize("alert", sorted(ALERT_RULES))
def test_each_alert_has_a_severity_a_summary_and_a_description(alert: str) -> None:
    rule = ALERT_RULES[alert]
    assert rule["labels"]["severity"] in {"critical", "warning"}
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]


@pytest.mark.parametrize("alert", sorted(ALERT_RULES))
def test_each_alert_names_only_series_streamer_exports(alert: str) -> None:
    names = series_names(ALERT_RULES[alert]["expr"])
    assert names and not unknown(names, code_series()), unknown(names, code_series())


def _jobs(expr: str) -> set[str]:
    found: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.update(m.value for m in node.matchers.matchers if m.name == "job")

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


@pytest.mark.parametrize("alert", sorted(ALERT_RULES))
def test_each_alert_selects_its_job_of_the_scrape_configuration(alert: str) -> None:
    expr = ALERT_RULES[alert]["expr"]
    jobs = _jobs(expr)
    assert len(jobs) == 1 and jobs <= SCRAPE_JOBS, jobs
    controller = any(name.startswith("streamer_controller_") for name in series_names(expr))
    assert jobs == {CONTROLLER_JOB if controller or "Controller" in alert else ENGINE_JOB}


@pytest.mark.parametrize(
    ("alert", "threshold"),
    [
        ("StreamerDeadLetterRateHigh", DEAD_LETTER_SHARE),
        ("StreamerEndToEndLatencyHigh", LATENCY_BUDGET_S),
        ("StreamerFeatureDrift", DRIFT_PSI),
        ("StreamerPredictionDrift", DRIFT_PSI),
    ],
)
def test_thresholds_are_the_lines_the_dashboard_draws(alert: str, threshold: float) -> None:
    found = re.search(r">\s*([0-9.]+)\s*$", ALERT_RULES[alert]["expr"].strip())
    assert found is not None and float(found[1]) == threshold
