"""The soak's RSS: sampled while the load ran, summarised against the flat-RSS target."""

from __future__ import annotations

from benchmarks.throughput import Sample, rss_samples, rss_summary

MB = 2**20


def sample(t: float, rss_mb: float) -> Sample:
    return Sample(t=t, cpu_s=0.0, rss=int(rss_mb * MB), broker_cpu_s=0.0, busy_s=0.0, steal_s=0.0)


def test_samples_start_with_the_ready_agent_and_stop_with_the_load() -> None:
    startup = [sample(95.0, 0.2), sample(97.0, 60.0), sample(99.5, 80.0)]
    load = [sample(100.0 + t, 100.0 + t / 10) for t in range(0, 301, 5)]
    drain_tail = [sample(405.0, 500.0)]

    picked = rss_samples(startup + load + drain_tail, (100.0, 400.0), every_s=10.0)

    assert picked[0] == {"t_s": -0.5, "rss_mb": 80.0}
    assert [p["t_s"] for p in picked[1:4]] == [10.0, 20.0, 30.0]
    assert picked[-1]["t_s"] == 300.0 and max(p["rss_mb"] for p in picked) == 130.0


def test_growth_is_between_minute_medians_after_the_warm_up() -> None:
    flat = [{"t_s": -0.1, "rss_mb": 90.0}] + [
        {"t_s": t, "rss_mb": 120.0 + (5 if t % 20 == 0 else 0)} for t in range(10, 601, 10)
    ]
    summary = rss_summary(flat)
    assert summary["ready"] == 90.0
    assert summary["after_warmup_median"] == summary["last_minute_median"] == 122.5
    assert summary["growth_after_warmup_pct"] == 0.0 and summary["flat"] is True

    leaking = [{"t_s": t, "rss_mb": 100.0 + t / 10} for t in range(10, 601, 10)]
    summary = rss_summary(leaking)
    assert summary["ready"] is None
    assert summary["growth_after_warmup_mb"] == 49.0 and summary["flat"] is False
