"""The Grafana dashboard of a streamer deployment, as code (grafana-foundation-sdk).

    python -m deploy.grafana.dashboard          # writes deploy/grafana/dashboards/streamer.json
    python -m deploy.grafana.dashboard --check  # exit 1 if that file is not what this builds

docker-compose.yml provisions the JSON file into Grafana. tests/unit/test_dashboard.py
checks that it is this module's output and that every query names only the engine's and
the controller's series; tests/integration/test_prometheus.py runs every query against a
real Prometheus scraping a running engine and controller.

Queries filter by `instance` (the variables `engine` and `controller`, filled from the
series themselves), so the dashboard works whatever the scrape jobs are called; only the
"up" counts name the jobs of deploy/prometheus/prometheus.yml.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from deploy.prometheus import CONTROLLER_JOB, ENGINE_JOB

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "streamer.json"
UID = "streamer"

LATENCY_BUDGET_S = 0.5
"""p99 end-to-end budget: StreamerEndToEndLatencyHigh's threshold in alerts.yml."""
DEAD_LETTER_SHARE = 0.05
"""StreamerDeadLetterRateHigh's threshold."""
DRIFT_PSI = 0.2
"""StreamerFeatureDrift's and StreamerPredictionDrift's threshold."""

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
ENGINE = 'instance=~"$engine"'
CONTROLLER = 'instance=~"$controller"'
RATE = "[$__rate_interval]"

Panel = stat.Panel | timeseries.Panel | table.Panel


def query(expr: str, legend: str = "__auto", ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).range()


def graph(
    title: str, description: str, unit: str, *queries: prometheus.Dataquery, span: int = 12
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(span)
        .height(8)
        .fill_opacity(10)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI))
    )
    for ref, q in zip("ABCDEFGH", queries, strict=False):
        panel.with_target(q.ref_id(ref))
    return panel


def threshold_line(panel: timeseries.Panel, value: float) -> timeseries.Panel:
    """Draws `value` (an alert's threshold) as a dashed red line."""
    return panel.thresholds(
        builders.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=None, color="green"), Threshold(value=value, color="red")])
    ).thresholds_style(
        common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
    )


def single(
    title: str, description: str, unit: str, expr: str, red_from: float | None = None
) -> stat.Panel:
    steps = [Threshold(value=None, color="green")]
    if red_from is not None:
        steps.append(Threshold(value=red_from, color="red"))
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(4)
        .height(4)
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .thresholds(builders.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
        .with_target(query(expr, legend=title))
    )


def quantiles(metric: str, selector: str, by: str = "", legend: str = "") -> list[str]:
    """histogram_quantile expressions of p50, p95, p99 over `metric`'s buckets."""
    group = f"{by}, le" if by else "le"
    return [
        f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{selector}}}{RATE})))"
        for q in ("0.5", "0.95", "0.99")
    ]


def instance_variable(name: str, label: str, metric: str) -> builders.QueryVariable:
    return (
        builders.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query({"query": f"label_values({metric}, instance)", "refId": "StandardVariableQuery"})
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def overview() -> list[Panel]:
    return [
        single(
            "Agents up",
            f"Targets of the scrape job {ENGINE_JOB} that answered their last scrape.",
            "none",
            f'count(up{{job="{ENGINE_JOB}"}} == 1) or vector(0)',
        ),
        single(
            "Controllers up",
            f"Targets of the scrape job {CONTROLLER_JOB} that answered their last scrape.",
            "none",
            f'count(up{{job="{CONTROLLER_JOB}"}} == 1) or vector(0)',
        ),
        single(
            "Events consumed",
            "Input events consumed per second by the selected agents.",
            "ops",
            f"sum(rate(streamer_events_consumed_total{{{ENGINE}}}{RATE}))",
        ),
        single(
            "Dead-lettered",
            "Share of consumed events sent to the dead-letter topic "
            f"(StreamerDeadLetterRateHigh above {DEAD_LETTER_SHARE:.0%}).",
            "percentunit",
            f"sum(rate(streamer_dead_letters_total{{{ENGINE}}}{RATE})) / "
            f"sum(rate(streamer_events_consumed_total{{{ENGINE}}}{RATE}))",
            red_from=DEAD_LETTER_SHARE,
        ),
        single(
            "p99 end to end",
            "99th percentile from the event's timestamp to its output's produce "
            f"(budget {LATENCY_BUDGET_S} s).",
            "s",
            quantiles("streamer_end_to_end_seconds", ENGINE)[2],
            red_from=LATENCY_BUDGET_S,
        ),
        single(
            "Lag",
            "Messages behind the high watermark, over every input partition.",
            "short",
            f"sum(streamer_consumer_lag{{{ENGINE}}})",
        ),
    ]


def throughput_and_latency() -> list[Panel]:
    p50, p95, p99 = quantiles("streamer_end_to_end_seconds", ENGINE)
    inference = quantiles("streamer_inference_seconds", ENGINE, by="variant")
    batch = quantiles("streamer_batch_size", ENGINE)
    return [
        graph(
            "Throughput",
            "Events consumed per agent, outputs served per variant, events scored by shadow "
            "variants, and events dead-lettered, per second.",
            "ops",
            query(
                f"sum by (instance) (rate(streamer_events_consumed_total{{{ENGINE}}}{RATE}))",
                "consumed {{instance}}",
            ),
            query(
                "sum by (variant) "
                f'(rate(streamer_predictions_total{{{ENGINE},shadow="false"}}{RATE}))',
                "served {{variant}}",
            ),
            query(
                "sum by (variant) "
                f'(rate(streamer_predictions_total{{{ENGINE},shadow="true"}}{RATE}))',
                "shadow {{variant}}",
            ),
            query(
                f"sum(rate(streamer_dead_letters_total{{{ENGINE}}}{RATE}))",
                "dead-lettered",
            ),
        ),
        threshold_line(
            graph(
                "End-to-end latency",
                "Percentiles from an event's timestamp to its output's produce, over the "
                "selected agents. The dashed line is the p99 budget of "
                "StreamerEndToEndLatencyHigh.",
                "s",
                query(p50, "p50"),
                query(p95, "p95"),
                query(p99, "p99"),
            ),
            LATENCY_BUDGET_S,
        ),
        graph(
            "Inference time per batch",
            "Percentiles of one variant's scoring of one batch (one ONNX call).",
            "s",
            query(inference[0], "p50 {{variant}}"),
            query(inference[2], "p99 {{variant}}"),
        ),
        graph(
            "Batch size",
            "Events per micro-batch: percentiles and mean.",
            "short",
            query(batch[0], "p50"),
            query(batch[2], "p99"),
            query(
                f"sum(rate(streamer_batch_size_sum{{{ENGINE}}}{RATE})) / "
                f"sum(rate(streamer_batch_size_count{{{ENGINE}}}{RATE}))",
                "mean",
            ),
        ),
    ]


def errors() -> list[Panel]:
    return [
        graph(
            "Dead letters by reason",
            "Events sent to the dead-letter topic per second, by reason "
            "(non_finite_output: StreamerNonFiniteOutputs).",
            "ops",
            query(
                f"sum by (reason) (rate(streamer_dead_letters_total{{{ENGINE}}}{RATE}))",
                "{{reason}}",
            ),
        ),
        graph(
            "Model reloads and control records",
            "Model versions swapped in or rejected, and control records applied, rejected or "
            "ignored, per minute (rejections: StreamerModelReloadRejected, "
            "StreamerControlRecordRejected).",
            "short",
            query(
                "sum by (variant, result) "
                f"(increase(streamer_model_reloads_total{{{ENGINE}}}[1m]))",
                "model {{variant}} {{result}}",
            ),
            query(
                f"sum by (result) (increase(streamer_control_records_total{{{ENGINE}}}[1m]))",
                "control record {{result}}",
            ),
        ),
        graph(
            "Shadows, lake and commits",
            "Per second: events shadows failed to score or skipped (budget), lake records "
            "dropped, refused offset commits and aborted exactly-once transactions.",
            "ops",
            query(
                f"sum by (variant) (rate(streamer_shadow_errors_total{{{ENGINE}}}{RATE}))",
                "shadow errors {{variant}}",
            ),
            query(
                f"sum by (variant) (rate(streamer_shadow_skipped_total{{{ENGINE}}}{RATE}))",
                "shadow skipped {{variant}}",
            ),
            query(
                f"sum by (reason) (rate(streamer_lake_records_dropped_total{{{ENGINE}}}{RATE}))",
                "lake dropped {{reason}}",
            ),
            query(
                f"sum(rate(streamer_commit_failures_total{{{ENGINE}}}{RATE}))",
                "commit failures",
            ),
            query(
                f'sum(rate(streamer_transactions_total{{{ENGINE},result="aborted"}}{RATE}))',
                "transactions aborted",
            ),
        ),
        table.Panel()
        .title("Models served")
        .description("The model version (and its SHA-256) each variant runs, per agent.")
        .datasource(DATASOURCE)
        .span(12)
        .height(8)
        .with_target(
            prometheus.Dataquery()
            .expr(f"max by (instance, variant, version, sha256) (streamer_model_info{{{ENGINE}}})")
            .format(PromQueryFormat.TABLE)
            .instant()
            .ref_id("A")
        ),
    ]


def lag() -> list[Panel]:
    return [
        graph(
            "Consumer lag per partition",
            "Messages behind the high watermark of each input partition, by the agent that "
            "owns it (StreamerNoProgress: growing while nothing is consumed).",
            "short",
            query(
                f"sum by (instance, partition) (streamer_consumer_lag{{{ENGINE}}})",
                "partition {{partition}} ({{instance}})",
            ),
        ),
        graph(
            "Controller lag",
            "Records behind the end of each lake and feedback partition a controller reads.",
            "short",
            query(
                f"sum by (topic, partition) (streamer_controller_lag{{{CONTROLLER}}})",
                "{{topic}} {{partition}}",
            ),
            query(
                f"sum(streamer_controller_pending_decisions{{{CONTROLLER}}})",
                "decisions waiting for a reward",
            ),
        ),
    ]


def bandit() -> list[Panel]:
    return [
        graph(
            "Variant weights",
            "The share of served traffic each variant gets on the agents, and the weights the "
            "controller last published.",
            "percentunit",
            query(
                f"avg by (variant) (streamer_variant_weight{{{ENGINE}}})",
                "served {{variant}}",
            ),
            query(
                f"max by (variant) (streamer_controller_weight{{{CONTROLLER}}})",
                "controller {{variant}}",
            ),
        ).min(0),
        graph(
            "Rewards by result",
            "Rewards and decisions per second by what became of them (joined, defaulted, "
            "expired, unknown, late, duplicate, evicted, invalid).",
            "ops",
            query(
                f"sum by (result) (rate(streamer_controller_rewards_total{{{CONTROLLER}}}{RATE}))",
                "{{result}}",
            ),
        ),
        graph(
            "Rewards per variant",
            "Rewards counted as evidence (joined or defaulted) per second, per variant, and "
            "control records the controllers published per minute.",
            "short",
            query(
                "sum by (variant) (rate(streamer_controller_rewards_total"
                f'{{{CONTROLLER},result=~"joined|defaulted"}}{RATE}))',
                "{{variant}}",
            ),
            query(
                f"sum(increase(streamer_controller_control_records_total{{{CONTROLLER}}}[1m]))",
                "control records published",
            ),
        ),
        graph(
            "Mean reward per variant",
            "The mean reward in the evidence the weights come from (every partition merged).",
            "short",
            query(
                f"max by (variant) (streamer_controller_mean_reward{{{CONTROLLER}}})",
                "{{variant}}",
            ),
        ),
        graph(
            "Evidence per variant",
            "Rewarded decisions (decayed) in the evidence, per variant.",
            "short",
            query(
                f"max by (variant) (streamer_controller_pulls{{{CONTROLLER}}})",
                "{{variant}}",
            ),
        ),
    ]


def drift() -> list[Panel]:
    return [
        threshold_line(
            graph(
                "Feature drift (PSI)",
                "Population stability index of each feature's live values against the "
                "reference profile, per variant (StreamerFeatureDrift above the line).",
                "short",
                query(
                    f"max by (variant, feature) (streamer_feature_drift_psi{{{ENGINE}}})",
                    "{{feature}} ({{variant}})",
                ),
            ),
            DRIFT_PSI,
        ),
        threshold_line(
            graph(
                "Prediction drift (PSI)",
                "Population stability index of each variant's predictions against the "
                "reference profile (StreamerPredictionDrift above the line).",
                "short",
                query(
                    f"max by (variant) (streamer_prediction_drift_psi{{{ENGINE}}})",
                    "{{variant}}",
                ),
            ),
            DRIFT_PSI,
        ),
    ]


def processes() -> list[Panel]:
    both = 'instance=~"$engine|$controller"'
    return [
        graph(
            "CPU",
            "CPU time per second (cores) of each agent and controller process.",
            "short",
            query(f"rate(process_cpu_seconds_total{{{both}}}{RATE})", "{{job}} {{instance}}"),
        ),
        graph(
            "Memory",
            "Resident memory of each agent and controller process.",
            "bytes",
            query(f"process_resident_memory_bytes{{{both}}}", "{{job}} {{instance}}"),
        ),
    ]


def build() -> builders.Dashboard:
    board = (
        builders.Dashboard("streamer")
        .uid(UID)
        .description("Streaming inference on Kafka: agents (streamer run) and bandit controllers.")
        .tags(["streamer", "kafka", "inference"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(
            builders.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(instance_variable("engine", "Agents", "streamer_events_consumed_total"))
        .with_variable(
            instance_variable("controller", "Controllers", "streamer_controller_pending_decisions")
        )
    )
    rows = [
        ("Overview", overview()),
        ("Throughput and latency", throughput_and_latency()),
        ("Dead letters, models and control", errors()),
        ("Kafka lag", lag()),
        ("Variants and bandit", bandit()),
        ("Drift", drift()),
        ("Processes", processes()),
    ]
    panel_id = 0
    for title, panels in rows:
        panel_id += 1
        board.with_row(builders.Row(title).id(panel_id))
        for panel in panels:
            panel_id += 1
            board.with_panel(panel.id(panel_id))
    return board


def render() -> str:
    """The dashboard as Grafana's JSON model (what OUTPUT holds)."""
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUTPUT.is_file() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: python -m deploy.grafana.dashboard", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
