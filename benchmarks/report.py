"""Tables (markdown) and plots (PNG) of `benchmarks.throughput`'s JSON results.

    .venv/bin/python -m benchmarks.report [OUT_DIR]

Re-draws whatever results OUT_DIR (benchmarks/results) holds: throughput.md, throughput.png,
latency.png, sweeps.png, soak.png. Plots need the `bench` extra (matplotlib); without it
only the tables are written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

LABELS = {
    "limit": "limit (bare batch loop, no model)",
    "limit-job": "bare batch loop doing the job (no safety)",
    "engine": "streamer, defaults",
    "engine-nolake": "streamer, lake off",
    "engine-shadow": "streamer, + shadow variant",
    "engine-eos": "streamer, exactly_once",
    "faust": "Faust agent (per event)",
    "per-event": "per-event confluent-kafka loop",
}


def label(mode: str) -> str:
    if mode.startswith("engine-eos-"):
        return f"streamer, exactly_once, commit every {mode.removeprefix('engine-eos-')} ms"
    if mode == "limit-loop":
        return "limit, produce() per message"
    if mode.startswith("limit-inflight-"):
        return f"limit, {mode.removeprefix('limit-inflight-')} batches in flight"
    return LABELS.get(mode, mode)


def _machine_line(data: dict[str, Any]) -> str:
    m = data["machine"]
    return (
        f"Machine: {m['nproc']} cores ({m['cpu_model']}), shared; load average "
        f"{m['loadavg_at_start'][0]} at the start, {m.get('loadavg_at_end', ['?'])[0]} at the "
        f"end; Python {m['python']}, confluent-kafka {m['confluent-kafka']} (librdkafka "
        f"{m['librdkafka']}), onnxruntime {m['onnxruntime']}, faust-streaming "
        f"{m.get('faust-streaming')}, Kafka {m['kafka_broker']}; {data['date']}."
    )


def throughput_table(data: dict[str, Any]) -> str:
    s = data["summary"]
    c = data["config"]
    lines = [
        f"Throughput: {c['events']:,} Avro events in {c['partitions']} partitions, drained "
        f"{c['repeats']} times by each contender (alternating), each in its own process.",
        "",
        "| contender | events/s (median) | range | x limit | x Faust | CPU s / 1k events "
        "| cores used | peak RSS |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, x in s.items():
        lines.append(
            f"| {label(mode)} | {x['median_events_per_s']:,.0f} | "
            f"{x['min_events_per_s']:,.0f} - {x['max_events_per_s']:,.0f} | "
            f"{_ratio(x.get('x_limit'))} | {_ratio(x.get('x_faust'))} | "
            f"{x['cpu_s_per_1k']['median']:.3f} | {x['cpu_cores']['median']:.2f} | "
            f"{x['peak_rss_mb']['median']:.0f} MB |"
        )
    lines += [
        "",
        "events/s: N / (last - first output CreateTime). CPU s / 1k events: the contender's "
        "user+sys over that window; cores used: the same CPU over the window's length. Peak "
        "RSS: the contender process's VmHWM. The limit copies bytes (no decoding, no "
        "model, one output per event); the engine writes two records per event (output and "
        "lake) unless the lake is off.",
        "",
        _machine_line(data),
    ]
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def latency_table(data: dict[str, Any]) -> str:
    lines = [
        f"Latency under open-loop load ({data['config']['seconds_per_load']:.0f} s per load): "
        "output CreateTime - the event's due time.",
        "",
        "| contender | load | offered events/s | p50 | p99 | p99.9 | max | cores used | "
        "generator cores | other cores |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(data["runs"], key=lambda r: (r["mode"], r["load"])):
        gen = r.get("generator_cores")
        others = r["others_cores"] - (gen or 0.0)
        lines.append(
            f"| {label(r['mode'])} | {r['load']:.0%} | {r['offered_per_s']:,.0f} | "
            f"{r['p50_ms']:,.1f} ms | {r['p99_ms']:,.1f} ms | {r['p99_9_ms']:,.1f} ms | "
            f"{r['max_ms']:,.0f} ms | {r['cpu_cores']:.2f} | "
            f"{'' if gen is None else f'{gen:.2f}'} | {others:.2f} |"
        )
    lines += [
        "",
        "Load: a share of the contender's median drain rate (the contenders table). Cores "
        "used: the contender's CPU over the run; generator cores: the open-loop generator's "
        "(on the same two cores); other cores: every other process but the broker (other "
        "people's work, this harness). A p50 of seconds means the contender fell behind the "
        "offered rate and the backlog grew for the whole run.",
        "",
        _machine_line(data),
    ]
    return "\n".join(lines)


def sweeps_table(data: dict[str, Any]) -> str:
    c = data["config"]
    lines = [
        f"Sweeps: drain throughput ({c['events']:,} events) and latency at "
        f"{c['offered_per_s']:,.0f} events/s offered ({c['seconds']:.0f} s) per setting; the "
        f"other knob at its default.",
        "",
        "| knob | value | events/s | CPU s / 1k | p50 | p99 | p99.9 | mean batch under load |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in data["points"]:
        lat = p.get("latency")
        cells = (
            f"{lat['p50_ms']:.1f} ms | {lat['p99_ms']:.1f} ms | {lat['p99_9_ms']:.1f} ms | "
            f"{p.get('load_mean_batch')}"
            if lat
            else "saturated | | |"
        )
        lines.append(
            f"| {p['knob']} | {p['value']} | {p['events_per_s']:,.0f} | "
            f"{p['cpu_s_per_1k']:.3f} | {cells} |"
        )
    lines += ["", _machine_line(data)]
    return "\n".join(lines)


def soak_text(data: dict[str, Any]) -> str:
    r = data["rss_mb"]
    minutes = ", ".join(_duration(v) for v in data.get("p99_by_minute_ms", []))
    return (
        f"Soak: the engine at {data['offered_per_s']:,.0f} events/s offered for "
        f"{data['seconds']:.0f} s ({data['events']:,} events), RSS every 10 s: "
        f"{r['ready']} MB ready before the load, {r['after_warmup_median']} MB (median) in "
        f"the first minute after {r['warmup_s']:.0f} s of load, {r['last_minute_median']} MB "
        f"in the last minute: {r['growth_after_warmup_mb']:+} MB "
        f"({r['growth_after_warmup_pct']:+}%, {'flat' if r['flat'] else 'NOT flat'}: the "
        f"target is within 10%); max {r['max']} MB. It used "
        f"{data['cpu_cores']:.2f} cores while the load generator used "
        f"{data.get('generator_cores', float('nan')):.2f} and all other processes but the "
        f"broker (the generator among them) {data['others_cores']:.2f}. Latency p50 "
        f"{_duration(data['p50_ms'])}, p99 {_duration(data['p99_ms'])}, p99.9 "
        f"{_duration(data['p99_9_ms'])}; p99 by minute: {minutes}.\n\n"
        f"{_machine_line(data)}"
    )


def _duration(ms: float) -> str:
    return f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.0f} ms"


def variance_table(data: dict[str, Any]) -> str:
    """`benchmarks.variance`: per contender, the spread of its rate and of what it got."""
    a = data["analysis"]
    lines = [
        f"Variance: {data['config']['events']:,} events drained {data['config']['repeats']} "
        "times by each contender, alternating. Per factor: median (min - max) over the "
        "runs, and its rank correlation with events/s.",
        "",
        "| contender | events/s median | range | CV | "
        + " | ".join(f.replace("_", " ") for f in FACTORS)
        + " |",
        "| --- | ---: | ---: | ---: |" + " ---: |" * len(FACTORS),
    ]
    for mode, x in a.items():
        cells = []
        for f in FACTORS:
            v = x["factors"][f]
            rho = v["spearman_with_events_per_s"]
            cells.append(
                f"{v['median']:.3g} ({v['min']:.3g} - {v['max']:.3g}); rho "
                f"{'n/a' if rho is None else f'{rho:+.2f}'}"
            )
        lines.append(
            f"| {label(mode)} | {x['median_events_per_s']:,.0f} | "
            f"{x['range_pct_of_median']:.0f}% | {x['cv_pct']:.1f}% | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "cpu s per 1k: the contender's CPU per 1,000 events; cpu cores: its CPU over the "
        "drain; runq wait cores: the time its threads were runnable but waiting for a core, "
        "over the drain (/proc/PID/task/*/schedstat: CPU it wanted and did not get); broker "
        "cores, others cores: what the broker and every other process used meanwhile.",
        "",
        _machine_line(data),
    ]
    return "\n".join(lines)


FACTORS = (
    "cpu_s_per_1k",
    "cpu_cores",
    "runq_wait_cores",
    "broker_cores",
    "others_cores",
    "loadavg_1m",
)


def _load(out: Path, name: str) -> dict[str, Any] | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_all(out: Path) -> list[Path]:
    """Tables and plots of whatever results `out` holds; the files written."""
    written: list[Path] = []
    soaks = sorted(p.stem for p in out.glob("soak*.json"))
    tables = {
        "throughput": throughput_table,
        "latency": latency_table,
        "sweeps": sweeps_table,
        "variance": variance_table,
    } | dict.fromkeys(soaks, soak_text)
    for name, table in tables.items():
        data = _load(out, name)
        if data is not None:
            md = out / f"{name}.md"
            md.write_text(table(data) + "\n")
            written.append(md)
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
    except ImportError:
        print("matplotlib not installed (the bench extra): no plots", file=sys.stderr)
        return written
    plots = {
        "throughput": _plot_throughput,
        "latency": _plot_latency,
        "sweeps": _plot_sweeps,
    } | dict.fromkeys(soaks, _plot_soak)
    for name, plot in plots.items():
        data = _load(out, name)
        if data is not None:
            path = out / f"{name}.png"
            plot(data, path)
            written.append(path)
    return written


def _plot_throughput(data: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    s = data["summary"]
    modes = list(s)
    med = [s[m]["median_events_per_s"] for m in modes]
    lo = [s[m]["median_events_per_s"] - s[m]["min_events_per_s"] for m in modes]
    hi = [s[m]["max_events_per_s"] - s[m]["median_events_per_s"] for m in modes]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    y = list(range(len(modes)))[::-1]
    ax.barh(y, med, xerr=[lo, hi], color="#4C72B0", capsize=4)
    for yi, m in zip(y, [s[m]["max_events_per_s"] for m in modes], strict=True):
        ax.text(
            m * 1.08,
            yi,
            f"{s[modes[len(y) - 1 - yi]]['median_events_per_s']:,.0f}",
            va="center",
            fontsize=9,
        )
    ax.set_yticks(y, [label(m) for m in modes])
    ax.set_xscale("log")
    ax.set_xlabel("events/s (median of runs; bars: min-max), log scale")
    c = data["config"]
    ax.set_title(
        f"Throughput, {c['events']:,} events, {c['partitions']} partitions, "
        f"{data['machine']['nproc']} shared cores"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_latency(data: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(8, 4.5))
    modes = sorted({r["mode"] for r in data["runs"]})
    styles = {"p50_ms": "-", "p99_ms": "--", "p99_9_ms": ":"}
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52"]
    for color, mode in zip(colors, modes, strict=False):
        runs = sorted((r for r in data["runs"] if r["mode"] == mode), key=lambda r: r["load"])
        x = [r["offered_per_s"] for r in runs]
        for key, style in styles.items():
            name = key.removesuffix("_ms").replace("_", ".")
            ax.plot(
                x,
                [r[key] for r in runs],
                style,
                marker="o",
                color=color,
                label=f"{label(mode)} {name}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered events/s (25/50/80% of each contender's maximum)")
    ax.set_ylabel("end-to-end latency, ms (log)")
    ax.set_title("Latency vs offered load (open loop)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_sweeps(data: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, knob in zip(axes, ("max_batch_size", "max_wait_ms"), strict=True):
        points = [p for p in data["points"] if p["knob"] == knob]
        x = [str(p["value"]) for p in points]
        ax.bar(x, [p["events_per_s"] for p in points], color="#4C72B0", alpha=0.6)
        ax.set_xlabel(knob)
        ax.set_ylabel("drain events/s", color="#4C72B0")
        ax2 = ax.twinx()
        for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
            ys = [p["latency"][key] if p.get("latency") else float("nan") for p in points]
            ax2.plot(x, ys, style, marker="o", color="#C44E52", label=key.removesuffix("_ms"))
        ax2.set_yscale("log")
        ax2.set_ylabel(f"latency at {data['config']['offered_per_s']:,.0f}/s, ms", color="#C44E52")
        ax2.legend(fontsize=8, loc="upper left")
        ax.set_title(f"{knob}: throughput vs latency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_soak(data: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    samples = data["rss_samples"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot([s["t_s"] for s in samples], [s["rss_mb"] for s in samples], marker=".")
    ax.set_xlabel("seconds since the load started")
    ax.set_ylabel("RSS, MB")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Soak: the engine at {data['offered_per_s']:,.0f} events/s")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else Path("benchmarks/results")
    for path in write_all(out):
        print(f"written {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
