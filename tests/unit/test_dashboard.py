"""deploy/grafana: the dashboard JSON is what deploy/grafana/dashboard.py builds, is a valid
Grafana dashboard, and every panel's query parses and names only series streamer exports.
tests/integration/test_prometheus.py runs the queries against a real Prometheus."""

from __future__ import annotations

import re
from typing import Any

import pytest

from deploy.grafana.dashboard import OUTPUT, UID, main, render
from deploy.promql import GRAFANA_VARIABLES, series_names
from tests.monitoring import ALL, DASHBOARD, PANELS, code_series, panel_queries, unknown

VARIABLES = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
TARGETS = [(panel["title"], target) for panel in PANELS for target in panel["targets"]]


def test_the_committed_json_is_what_the_code_builds() -> None:
    assert OUTPUT.read_text() == render(), "run python -m deploy.grafana.dashboard"
    assert main(["--check"]) == 0


def test_it_is_a_grafana_dashboard() -> None:
    assert DASHBOARD["uid"] == UID and DASHBOARD["title"]
    assert isinstance(DASHBOARD["schemaVersion"], int)
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)


def test_panels_stay_within_the_grid_and_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in DASHBOARD["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
        cells = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


@pytest.mark.parametrize("panel", PANELS, ids=[p["title"] for p in PANELS])
def test_every_panel_queries_prometheus_through_the_datasource_variable(
    panel: dict[str, Any],
) -> None:
    assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert VARIABLES["datasource"]["query"] == "prometheus"
    refs = [t["refId"] for t in panel["targets"]]
    assert refs and len(refs) == len(set(refs)) and all(refs)
    assert all(t["expr"].strip() for t in panel["targets"])
    assert panel["title"] and panel["description"]


def test_every_variable_a_query_uses_is_defined() -> None:
    used = {
        name
        for _, target in TARGETS
        for name in re.findall(r"\$\{?(\w+)", target["expr"])
        if name not in GRAFANA_VARIABLES
    }
    assert used == set(ALL) and used <= set(VARIABLES)


@pytest.mark.parametrize(("title", "expr"), panel_queries())
def test_every_query_names_only_series_streamer_exports(title: str, expr: str) -> None:
    names = series_names(expr)  # ValueError if it does not parse
    assert names and not unknown(names, code_series()), unknown(names, code_series())


def test_the_variables_list_the_instances_of_series_streamer_exports() -> None:
    for name in ALL:
        query = VARIABLES[name]["query"]["query"]
        found = re.fullmatch(r"label_values\((\w+), instance\)", query)
        assert found and found[1] in code_series(), query
        assert VARIABLES[name]["multi"] and VARIABLES[name]["includeAll"]


def test_the_panels_the_issue_asks_for_are_there() -> None:
    queries = " ".join(target["expr"] for _, target in TARGETS)
    titles = {panel["title"] for panel in PANELS}
    assert titles >= {
        "Throughput",
        "End-to-end latency",
        "Batch size",
        "Dead letters by reason",
        "Consumer lag per partition",
        "Variant weights",
        "Rewards per variant",
        "Mean reward per variant",
        "Feature drift (PSI)",
        "Prediction drift (PSI)",
        "CPU",
        "Memory",
    }
    for metric in (
        "streamer_events_consumed_total",
        "streamer_predictions_total",
        "streamer_end_to_end_seconds_bucket",
        "streamer_batch_size_bucket",
        "streamer_dead_letters_total",
        "streamer_consumer_lag",
        "streamer_variant_weight",
        "streamer_controller_weight",
        "streamer_controller_rewards_total",
        "streamer_controller_mean_reward",
        "streamer_feature_drift_psi",
        "streamer_prediction_drift_psi",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert metric in queries, metric
