"""Bandit: regret of the live controller's policies on the real broker and engine.

    .venv/bin/python -m benchmarks.bandit [--events N] [--rate R] [--seed S]
        [--policies thompson,ucb1,epsilon_greedy,uniform] [--out benchmarks/results/bandit.json]
    .venv/bin/python -m benchmarks.bandit --report benchmarks/results/bandit.json

Starts its own broker. For each policy, one topology with three served variants (all the
fraud_v2 demo model: the reward depends only on the variant) whose true success rates are
5.0 %, 5.5 % and 6.5 %, run in-process: the agent (`RunningAgent`), the controller
(`RunningController`, `routing.strategy: bandit`) and two threads of this module:

* an open-loop feed that produces N demo events at a fixed rate (R events/s), whatever the
  engine does with them;
* a rewarder that reads every served output and sends `{"id", "reward"}` (key = id) to the
  feedback topic `uniform(0, 30)` s after the event was served, reward ~ Bernoulli(the
  served variant's rate).

"uniform" is the same topology with static, equal weights and no controller.

The seed fixes the events, their ids and each event's reward draw u and delay (reward =
u < rate[variant]), so every policy meets the same luck, and the policies' own random draws
(`bandit.seed`). What stays free is timing: when a batch closes, when an update lands.

Regret is expected regret: each served output adds rate[best] - rate[its variant], in the
order the outputs were predicted (ts_predicted), so the curves carry no reward noise. The
floor is the Lai-Robbins bound for Bernoulli arms, sum over the suboptimal arms of
(mu* - mu_i) / KL(mu_i, mu*) * ln(t); it holds asymptotically, so early on it can lie above
what a policy achieves.

Rate: rewards come up to 30 s late, so the rate sets how many events are served blind
before the first evidence (about rate * 15 s); 2,000 events/s keeps a 200k-event run at
about 100 s per policy on a 2-core machine while the agent, controller, rewarder and broker
share it.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from confluent_kafka import Consumer, Producer

from benchmarks.throughput import (
    DEFAULT_BATCH,
    DEFAULT_PARTITIONS,
    ROOT,
    SCHEMA,
    BenchmarkError,
    drain_engine,
    engine_topology,
    local_broker,
    machine_facts,
    preload,
)
from streamer.codecs import make_encoder
from streamer.config import Topology
from streamer.control.record import parse
from streamer.control.topic import read_all
from streamer.demo.data import generate_transactions
from streamer.kafka.admin import create_topics
from streamer.testing import RunningAgent, RunningController, unique

RATES: dict[str, float] = {"v050": 0.050, "v055": 0.055, "v065": 0.065}
NAMES = list(RATES)
BEST = max(RATES, key=RATES.__getitem__)
GAPS = np.array([RATES[BEST] - RATES[n] for n in NAMES])
POLICIES = ("thompson", "ucb1", "epsilon_greedy", "uniform")
DELAY_S = (0.0, 30.0)
DEFAULT_EVENTS = 200_000
DEFAULT_RATE = 2000.0
DEFAULT_SEED = 7
SHARE_WINDOW = 5000
"""Served events per point of the best-share curve."""
CURVE_STEP = 1000
"""Served events per point of the regret curve."""
LEADS_AT = 0.8
EARLY = 100_000
"""The issue's 100k events: regret there too (a longer run gives it for free)."""
WARM_UP_EVENTS = 20_000
BANDIT: dict[str, Any] = {
    "update_interval_s": 1.0,  # the fastest the controller reacts
    "min_rewards": 100,  # Thompson's posterior is near-uniform before that anyway
    "min_weight": 0.01,  # the floor costs at least 0.01 * (0.015 + 0.010) per event
    "reward_window_s": 60.0,  # delays reach 30 s; margin for consumer lag
    "epsilon": 0.1,
    "metrics_port": None,
}
DEFAULT_OUT = Path("benchmarks/results/bandit.json")


def code_state() -> dict[str, Any]:
    """The commit measured, and the files of streamer/ that differed from it at the start."""

    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return run.stdout.strip()

    changed = git("status", "--porcelain", "--", "streamer").splitlines()
    return {"git_head": git("rev-parse", "HEAD"), "streamer_uncommitted": changed}


def event_key(i: int) -> str:
    return f"ev-{i:08d}"


def topology(name: str, bootstrap: str, policy: str, seed: int) -> Topology:
    """The throughput benchmark's engine topology with three served variants (and, unless
    uniform, the bandit routing and controller)."""
    raw = engine_topology(
        name, bootstrap, f"{name}-in", DEFAULT_PARTITIONS, DEFAULT_BATCH
    ).model_dump(mode="json", by_alias=True)
    model = raw["variants"][0]["model"]
    raw["variants"] = [{"name": n, "model": model, "weight": 1.0} for n in NAMES]
    if policy != "uniform":
        raw["routing"] = {"strategy": "bandit", "control_topic": f"{name}-control"}
        feedback = f"{name}-feedback"
        raw["bandit"] = {"policy": policy, "feedback_topic": feedback, "seed": seed, **BANDIT}
    return Topology.model_validate(raw)


class _Thread:
    """A daemon thread running `work()` until `stop()`; its exception surfaces in `stop()`."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.work()
        except BaseException as exc:
            self.error = exc

    def work(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Thread:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        if self.error is not None:
            raise BenchmarkError(f"{type(self).__name__}: {self.error!r}")


class Feed(_Thread):
    """Produces N Avro demo events (key = id = `event_key(i)`) at `rate` per second."""

    def __init__(self, bootstrap: str, topic: str, n: int, rate: float, seed: int) -> None:
        super().__init__()
        self.bootstrap, self.topic, self.n, self.rate, self.seed = bootstrap, topic, n, rate, seed
        self.sent = 0
        self.seconds = 0.0

    def work(self) -> None:
        encoder = make_encoder("avro", SCHEMA)
        pool = generate_transactions(1000, seed=self.seed)
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 2})
        began = time.monotonic()
        while self.sent < self.n and not self._stop.is_set():
            key = event_key(self.sent)
            value = encoder.encode({**pool[self.sent % len(pool)], "id": key})
            producer.produce(self.topic, value, key.encode())
            self.sent += 1
            producer.poll(max(self.sent / self.rate - (time.monotonic() - began), 0.0))
        self.seconds = time.monotonic() - began
        if producer.flush(30):
            raise BenchmarkError("feed: events unacknowledged")


class Rewarder(_Thread):
    """Reads served outputs (each id once); with a feedback topic, sends each one's reward
    `delay[i]` seconds after it was served. Keeps (ts_predicted, variant index, latency)."""

    def __init__(
        self,
        bootstrap: str,
        t: Topology,
        u: npt.NDArray[np.float64],
        delay: npt.NDArray[np.float64],
    ) -> None:
        super().__init__()
        self.bootstrap, self.topology, self.u, self.delay = bootstrap, t, u, delay
        self.served: list[tuple[int, int, int]] = []
        self.sent = 0
        self.late_s = 0.0
        """The most a reward went out after it was due (a backlogged rewarder)."""
        self._seen: set[str] = set()
        self.done = threading.Event()

    def work(self) -> None:
        feedback = self.topology.bandit.feedback_topic if self.topology.bandit else None
        index = {n: k for k, n in enumerate(NAMES)}
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": unique("rewarder"),
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([self.topology.output.topic])
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        due: list[tuple[float, str, bytes]] = []
        try:
            while not self._stop.is_set():
                for msg in consumer.consume(1000, 0.02):
                    if msg.error():
                        raise BenchmarkError(f"rewarder: {msg.error()}")
                    out = orjson.loads(msg.value() or b"")
                    event_id, variant = out["id"], out["variant"]
                    if event_id in self._seen:
                        continue
                    self._seen.add(event_id)
                    served_ms = int(out["ts_predicted"])
                    self.served.append(
                        (served_ms, index[variant], served_ms - int(out["ts_event"]))
                    )
                    if feedback is not None:
                        i = int(event_id[3:])
                        reward = int(self.u[i] < RATES[variant])
                        body = orjson.dumps({"id": event_id, "reward": reward})
                        at = served_ms / 1000 + float(self.delay[i])
                        heapq.heappush(due, (at, event_id, body))
                if len(self._seen) >= len(self.u):
                    self.done.set()
                now = time.time()
                while due and due[0][0] <= now:
                    at, key, body = heapq.heappop(due)
                    assert feedback is not None
                    producer.produce(feedback, body, key.encode())
                    self.late_s = max(self.late_s, now - at)
                    self.sent += 1
                producer.poll(0)
        finally:
            producer.flush(10)
            consumer.close()


def analyse(served: Sequence[tuple[int, int, int]]) -> dict[str, Any]:
    """Regret and best share in the order the outputs were predicted."""
    ordered = sorted(served, key=lambda s: s[0])  # stable: ties keep their read order
    arms = np.array([s[1] for s in ordered])
    latency = np.array([s[2] for s in ordered])
    regret = np.cumsum(GAPS[arms])
    best = arms == NAMES.index(BEST)
    windows = len(best) // SHARE_WINDOW
    shares = best[: windows * SHARE_WINDOW].reshape(windows, SHARE_WINDOW).mean(axis=1)
    leading = np.flatnonzero(shares >= LEADS_AT)
    counts = np.bincount(arms, minlength=len(NAMES))
    return {
        "served": len(arms),
        "final_regret": round(float(regret[-1]), 2),
        "events_until_best_80": int((leading[0] + 1) * SHARE_WINDOW) if len(leading) else None,
        "final_best_share": round(float(shares[-1]), 4),
        "overall_shares": {
            n: round(int(c) / len(arms), 4) for n, c in zip(NAMES, counts, strict=True)
        },
        "latency_ms": {
            "p50": float(np.percentile(latency, 50)),
            "p99": float(np.percentile(latency, 99)),
        },
        "best_share_curve": [round(float(s), 4) for s in shares],
        "regret_curve": [round(float(r), 2) for r in regret[CURVE_STEP - 1 :: CURVE_STEP]],
    }


def kl_bernoulli(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def lai_robbins_constant() -> float:
    """sum over suboptimal arms of (mu* - mu_i) / KL(mu_i, mu*): the floor is this * ln t."""
    best = RATES[BEST]
    return sum((best - r) / kl_bernoulli(r, best) for n, r in RATES.items() if n != BEST)


def run_policy(
    bootstrap: str,
    policy: str,
    u: npt.NDArray[np.float64],
    delay: npt.NDArray[np.float64],
    rate: float,
    seed: int,
) -> dict[str, Any]:
    n = len(u)
    t = topology(unique(f"bandit-{policy.replace('_', '-')}"), bootstrap, policy, seed)
    create_topics(t)
    timeout_s = 2 * n / rate + 120
    cpu_before = sum(os.times()[:2])
    extra: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        controller = None
        if t.bandit is not None:
            controller = stack.enter_context(RunningController(t))
            deadline = time.monotonic() + 60
            while not controller.controller.publishing:
                if controller.error is not None or time.monotonic() > deadline:
                    raise BenchmarkError(f"{policy}: the controller did not start")
                time.sleep(0.05)
            time.sleep(1.0)  # its consumer positioned at the (empty) end
        agent = stack.enter_context(RunningAgent(t))
        deadline = time.monotonic() + 60
        while not agent.agent.assigned:  # start-up is not part of the run
            if agent.error is not None or time.monotonic() > deadline:
                raise BenchmarkError(f"{policy}: the agent did not start")
            time.sleep(0.05)
        rewarder = Rewarder(bootstrap, t, u, delay)
        stack.enter_context(rewarder)
        feed = Feed(bootstrap, t.input.topic, n, rate, seed)
        stack.enter_context(feed)
        deadline = time.monotonic() + timeout_s
        while not rewarder.done.wait(1.0):
            failed = rewarder.error or agent.error or (controller and controller.error)
            if failed or time.monotonic() > deadline:
                raise BenchmarkError(f"{policy}: {len(rewarder.served)} of {n} served ({failed!r})")
        feed.stop()
        rewarder.stop()
        stats = agent.stop()
        if controller is not None:
            c = controller.stop()
            extra = {"controller_rewards": c.rewards, "control_records": c.published}
    if stats.dead_letters:
        raise BenchmarkError(f"{policy}: {stats.dead_letters} dead letters")
    if t.routing.control_topic is not None:
        entries = read_all(t.kafka, t.routing.control_topic)
        mine = [r for e in entries if e.value and (r := parse(e.value)).source == "controller"]
        if mine:
            extra["final_weights"] = {k: round(v, 4) for k, v in mine[-1].weights.items()}
    return {
        "policy": policy,
        "process_cpu_s": round(sum(os.times()[:2]) - cpu_before, 1),
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "feed_events_per_s": round(n / feed.seconds, 1),
        "rewards_sent": rewarder.sent,
        "rewards_max_late_s": round(rewarder.late_s, 3),
        **extra,
        **analyse(rewarder.served),
    }


def summarize(runs: Sequence[dict[str, Any]], n: int) -> dict[str, Any]:
    """Per policy: regret at the end and after `EARLY` events, and against uniform's."""

    def regret_at(run: dict[str, Any], events: int) -> float | None:
        curve = run["regret_curve"]
        k = events // CURVE_STEP - 1
        return float(curve[k]) if events <= n and 0 <= k < len(curve) else None

    def ratio(x: float | None, y: float | None) -> float | None:
        return round(x / y, 3) if x is not None and y else None

    uniform = next((r for r in runs if r["policy"] == "uniform"), None)
    uniform_final = uniform["final_regret"] if uniform else None
    uniform_early = regret_at(uniform, EARLY) if uniform else None
    table = {}
    for r in runs:
        early = regret_at(r, EARLY)
        table[r["policy"]] = {
            "final_regret": r["final_regret"],
            "ratio_to_uniform": ratio(r["final_regret"], uniform_final),
            f"regret_at_{EARLY}": early,
            f"ratio_to_uniform_at_{EARLY}": ratio(early, uniform_early),
            "events_until_best_80": r["events_until_best_80"],
            "final_best_share": r["final_best_share"],
            "overall_best_share": r["overall_shares"][BEST],
        }
    thompson = table.get("thompson", {}).get("ratio_to_uniform")
    return {
        "policies": table,
        "lai_robbins_floor_at_n": round(lai_robbins_constant() * math.log(n), 2),
        f"lai_robbins_floor_at_{EARLY}": round(lai_robbins_constant() * math.log(EARLY), 2),
        "target": "thompson regret <= 0.3 x uniform",
        "thompson_meets_target": None if thompson is None else thompson <= 0.3,
    }


def markdown(result: dict[str, Any]) -> str:
    c, s, m = result["config"], result["summary"], result["machine"]
    n = c["events"]

    def times(x: float | None) -> str:
        return f"{x:.2f}x" if x is not None else "-"

    def count(x: float | None) -> str:
        return f"{x:,.0f}" if x is not None else "-"

    lines = [
        f"Bandit benchmark: {n:,} events at {c['rate']:,.0f}/s, true rates "
        + ", ".join(f"{name} {r:.1%}" for name, r in RATES.items())
        + f", rewards {c['delay_s'][0]:.0f}-{c['delay_s'][1]:.0f} s late, seed {c['seed']}.",
        "",
        f"| policy | regret at {n:,} | vs uniform | regret at {EARLY:,} | vs uniform "
        "| events until best >= 80% | final best share | best share overall |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for policy, x in s["policies"].items():
        until = f"{x['events_until_best_80']:,}" if x["events_until_best_80"] else "never"
        lines.append(
            f"| {policy} | {count(x['final_regret'])} | {times(x['ratio_to_uniform'])} "
            f"| {count(x[f'regret_at_{EARLY}'])} | {times(x[f'ratio_to_uniform_at_{EARLY}'])} "
            f"| {until} | {x['final_best_share']:.1%} | {x['overall_best_share']:.1%} |"
        )
    early_floor = s.get(f"lai_robbins_floor_at_{EARLY}") if n >= EARLY else None
    lines.append(
        f"| Lai-Robbins floor | {count(s['lai_robbins_floor_at_n'])} | | {count(early_floor)} "
        "| | | | |"
    )
    lines += [
        "",
        "Regret is expected regret (sum of 6.5% - the served variant's rate); the Lai-Robbins "
        "floor is asymptotic, so a policy can sit below it this early. Events until best >= 80%: "
        f"the end of the first {SHARE_WINDOW:,}-event window in which {BEST} served >= 80%; "
        f"final best share: its share of the last {SHARE_WINDOW:,} events.",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu_model']}), shared; load average "
        f"{m['loadavg_at_start'][0]} at the start, {m['loadavg_at_end'][0]} at the end.",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> bool:
    """Two panels: best share and cumulative regret against served events. False without
    matplotlib (`pip install -e '.[bench]'`)."""
    try:
        import matplotlib  # noqa: PLC0415 - optional extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    fig, (share_ax, regret_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in result["runs"]:
        shares = run["best_share_curve"]
        xs = [(k + 1) * SHARE_WINDOW for k in range(len(shares))]
        share_ax.plot(xs, shares, label=run["policy"])
        regret = run["regret_curve"]
        regret_ax.plot(
            [(k + 1) * CURVE_STEP for k in range(len(regret))], regret, label=run["policy"]
        )
    n = result["config"]["events"]
    ts = np.linspace(CURVE_STEP, n, 200)
    regret_ax.plot(ts, lai_robbins_constant() * np.log(ts), "k--", label="Lai-Robbins floor")
    share_ax.set(
        xlabel="served events", ylabel=f"share served by {BEST} (per {SHARE_WINDOW:,})", ylim=(0, 1)
    )
    regret_ax.set(xlabel="served events", ylabel="cumulative expected regret")
    share_ax.legend(loc="lower right")
    regret_ax.legend(loc="upper left")
    for ax in (share_ax, regret_ax):
        ax.grid(alpha=0.3)
    c = result["config"]
    fig.suptitle(
        f"{c['events']:,} events at {c['rate']:,.0f}/s; rates "
        + ", ".join(f"{r:.1%}" for r in RATES.values())
        + f"; rewards 0-{c['delay_s'][1]:.0f} s late"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(result: dict[str, Any], out: Path) -> None:
    """Write the table (.md) and plot (.png) beside the JSON and print the table."""
    table = markdown(result)
    out.with_suffix(".md").write_text(table)
    print(table)
    if not plot(result, out.with_suffix(".png")):
        print("matplotlib missing: no plot (pip install -e '.[bench]')", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bandit", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add = parser.add_argument
    add("--events", type=int, default=DEFAULT_EVENTS, help="events per policy (%(default)s)")
    add("--rate", type=float, default=DEFAULT_RATE, help="events/s fed (%(default)s)")
    add("--seed", type=int, default=DEFAULT_SEED, help="(%(default)s)")
    add("--policies", default=",".join(POLICIES), help="(%(default)s)")
    add("--out", type=Path, default=DEFAULT_OUT, help="JSON result file (%(default)s)")
    add("--report", type=Path, help="only redo the table and plot of this JSON result")
    args = parser.parse_args(argv)
    if args.report is not None:
        result = json.loads(args.report.read_text())
        result["summary"] = summarize(result["runs"], result["config"]["events"])
        args.report.write_text(json.dumps(result, indent=2) + "\n")
        report(result, args.report)
        return 0
    policies = [p for p in args.policies.split(",") if p]
    if unknown := set(policies) - set(POLICIES):
        parser.error(f"unknown policies: {', '.join(sorted(unknown))}")
    rng = np.random.default_rng(args.seed)
    u = rng.random(args.events)
    delay = rng.uniform(*DELAY_S, args.events)
    machine = machine_facts()
    code = code_state()
    runs = []
    with local_broker() as bootstrap:
        warm = unique("bandit-warm-up")  # a fresh broker's JIT must not tax the first policy
        warm_up = engine_topology(warm, bootstrap, f"{warm}-in", DEFAULT_PARTITIONS, DEFAULT_BATCH)
        preload(warm_up, WARM_UP_EVENTS)
        drain_engine(warm_up, WARM_UP_EVENTS, 300)
        for policy in policies:
            print(f"{policy}: {args.events:,} events at {args.rate:,.0f}/s", file=sys.stderr)
            run = run_policy(bootstrap, policy, u, delay, args.rate, args.seed)
            runs.append(run)
            print(
                f"  regret {run['final_regret']:,.0f}, best share {run['final_best_share']:.1%},"
                f" p99 latency {run['latency_ms']['p99']:.0f} ms",
                file=sys.stderr,
            )
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "benchmark": "bandit",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "events": args.events,
            "rate": args.rate,
            "seed": args.seed,
            "rates": RATES,
            "delay_s": list(DELAY_S),
            "bandit": BANDIT,
            "partitions": DEFAULT_PARTITIONS,
            "share_window": SHARE_WINDOW,
            "curve_step": CURVE_STEP,
            "regret": "expected: sum of rate[best] - rate[served variant], ts_predicted order",
            "lai_robbins_constant": round(lai_robbins_constant(), 3),
        },
        "machine": machine,
        "code": code,
        "summary": summarize(runs, args.events),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    report(result, args.out)
    print(f"written {args.out}, .md, .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
