"""`streamer demo`: the whole path on the local broker, with a live view and a summary.

Starts (or reuses) the local Kafka, trains the demo models and lays out the model
directories if missing, creates the topology's topics, streams synthetic transactions with 1%
garbage at a steady rate, serves them with an in-process agent and finally reads the output
topic back to report exact end-to-end latency and the variant split with model versions.

With a `bandit` section the demo closes the loop: an in-process bandit controller, and a
feedback producer that knows each transaction's true label and rewards every served
prediction (1 when right, 0 when wrong) a few seconds after it. The live view shows the
weights moving toward the most accurate variant, the summary the final split and each
variant's mean reward (its accuracy). The controller's learned state lives on its checkpoint
topic, so the next run starts from the weights this one ended with.

The agent follows the topology's control topic and watches its model directories, so the
live view shows what `streamer control ... disable champion` or a new
`models/challenger/N/model.onnx` changes while the demo runs.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from streamer.agent import Agent
from streamer.codecs import make_decoder, make_encoder
from streamer.config import Topology, load_topology
from streamer.demo.data import generate_dataset
from streamer.demo.feedback import REWARD_DELAY_S, Feedback
from streamer.demo.train import ensure_models
from streamer.errors import StreamerError
from streamer.kafka.admin import create_topics
from streamer.kafka.clients import make_consumer, make_producer, produce, retrying
from streamer.kafka.local import LocalKafka, answers, start
from streamer.metrics import ControllerMetrics
from streamer.repository import scan, version_key
from streamer.testing import RunningAgent, RunningController
from streamer.validate import validate

GARBAGE_SHARE = 0.01
"""Share of deliberately broken events, so the dead-letter path shows up in the summary."""
SETTLE_TIMEOUT_S = 15.0
"""After the last event is served, how long the demo waits at most for the last rewards to
be sent and joined by the controller (then one update interval for its last weights)."""
READY_TIMEOUT_S = 30.0
"""How long the demo waits for the agent (and controller) to own their partitions before it
sends the first event anyway."""
SETTLE_MARGIN_S = 0.5
"""Beyond the controller's update interval: for its last weights to reach the agent."""


@dataclass(frozen=True)
class BanditSummary:
    """What the closed loop did (with a bandit section)."""

    rewards_sent: int
    rewards: dict[str, tuple[int, float]]
    """Served variant -> (rewards sent for its predictions, their mean: its accuracy)."""
    joined: int
    """Rewards the controller joined to their decisions."""
    updates: int
    """Weights the controller published while the demo ran."""
    weights: dict[str, float]
    """The split in force at the end (a disabled variant is absent)."""
    evidence: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Served variant -> (rewards, mean) in the controller's evidence at the end: this run's
    and what it learned before (its checkpoints outlive a run)."""


@dataclass(frozen=True)
class DemoSummary:
    events: int
    served: int
    dead_letters: dict[str, int]
    seconds: float
    throughput: float
    latency_ms: dict[str, float]
    variants: dict[str, int]
    """Served variant -> outputs read back."""
    versions: dict[str, dict[str, int]]
    """Served variant -> model version -> outputs read back (a version can change live)."""
    shadow_scored: int
    bandit: BanditSummary | None = None


@dataclass(frozen=True)
class VariantLive:
    """One served variant in a line of the live view."""

    name: str
    weight: float | None
    """Its share of the routing weights in force; None while it is disabled."""
    served: int
    """Outputs it served since the previous line."""
    version: str
    """The model version it serves."""
    mean_reward: float | None = None
    """Its mean reward in the controller's evidence; None before any (or without one)."""


@dataclass(frozen=True)
class LiveLine:
    """What one line of the live view shows."""

    elapsed: float
    served: int
    dead_letters: int
    rate: float
    """Events served or dead-lettered per second since the previous line."""
    variants: list[VariantLive]
    rewards: int | None = None
    """Rewards the controller joined so far; None without a controller."""


def run_demo(
    topology_path: Path, events: int, rate: float, echo: Callable[[str], None]
) -> DemoSummary:
    """Run the demo end to end; `echo` receives the live view and progress lines."""
    if not topology_path.exists():
        raise StreamerError(
            f"{topology_path}: not found; run the demo from the repository root or pass --topology"
        )
    topology = load_topology(topology_path)
    for directory, missing in missing_models(topology).items():
        echo(f"creating demo models in {directory} ({', '.join(missing)}) ...")
        ensure_models(directory)
    validation = validate(topology_path)
    if validation.problems:
        raise StreamerError(str(validation.problems[0]))

    bootstrap = topology.kafka.bootstrap_servers
    if _is_local(bootstrap) and not answers(bootstrap, 3.0):
        result = start(LocalKafka(port=int(bootstrap.rsplit(":", 1)[1])))
        echo(
            f"Kafka {'already running' if result.already_running else 'started'} at "
            f"{result.bootstrap}"
        )
    for t in create_topics(topology):
        echo(f"topic {t.topic}: {'created' if t.created else 'exists'} ({t.partitions} partitions)")

    start_offsets = _end_offsets(topology)
    run = time.strftime("%H%M%S")
    truth: dict[str, int] = {}  # event id -> true label: the feedback's ground truth
    errors: list[BaseException] = []
    producer = threading.Thread(
        target=_produce_events,
        args=(topology, events, rate),
        kwargs={"run": run, "truth": truth, "errors": errors},
        daemon=True,
    )
    closed_loop = topology.bandit is not None and len(topology.served) >= 2
    with ExitStack() as stack:
        controller: RunningController | None = None
        feedback: Feedback | None = None
        if closed_loop:
            controller = stack.enter_context(RunningController(topology))
        running = stack.enter_context(RunningAgent(topology, validation.models))
        if closed_loop:
            feedback = Feedback(topology, truth, start_offsets, seed=int(run))
            stack.callback(feedback.close)
            echo(describe_loop(topology))
        live = Live(running, controller, feedback)
        live.wait_until_ready(READY_TIMEOUT_S)
        began = time.monotonic()
        producer.start()
        if feedback is not None:
            feedback.start()
        _live_view(live, events, began, echo, errors)
        # Stop in order: no more rewards, the controller checkpoints, then the agent.
        bandit = None
        if feedback is not None and controller is not None:
            feedback.stop()
            stats = controller.stop()
            bandit = BanditSummary(
                rewards_sent=feedback.sent.total,
                rewards=feedback.sent.means(),
                joined=stats.rewards.get("joined", 0),
                updates=stats.published,
                weights=dict(running.agent.variants.latest.router.weights),
                evidence=_evidence(controller.controller.metrics),
            )
        running.stop()
    if errors:
        raise StreamerError(f"demo failed: {errors[0]}")
    summary = _summarise(topology, running.agent, events, start_offsets, time.monotonic() - began)
    return replace(summary, bandit=bandit)


def describe_loop(topology: Topology) -> str:
    """The line that says how the demo closes the loop."""
    assert topology.bandit is not None
    b = topology.bandit
    low, high = REWARD_DELAY_S
    return (
        f"bandit: {b.policy} controller; each served prediction earns 1 when right, 0 when "
        f"wrong, {low:g}-{high:g} s later on {b.feedback_topic}"
    )


def missing_models(topology: Topology) -> dict[Path, list[str]]:
    """Directory -> the variants' models in it with nothing to serve (no file, or a model
    directory without versions), for `ensure_models` to create."""
    missing: dict[Path, list[str]] = defaultdict(list)
    for v in topology.variants:
        if not scan(v):
            missing[v.model.parent].append(v.model.name)
    return dict(sorted(missing.items()))


def _is_local(bootstrap: str) -> bool:
    host = bootstrap.rsplit(":", 1)[0]
    return host in ("localhost", "127.0.0.1") and "," not in bootstrap


def _produce_events(
    topology: Topology,
    n: int,
    rate: float,
    *,
    run: str,
    truth: dict[str, int],
    errors: list[BaseException],
) -> None:
    """Stream `n` events at `rate` per second, GARBAGE_SHARE of them broken; the true label
    of each good one goes into `truth` (by id) before it is sent."""
    try:
        encoder = make_encoder(topology.input.format, topology.input.schema_)
        producer = make_producer(topology.kafka, {"linger.ms": 1})
        rng = random.Random(run)  # noqa: S311 - demo garbage, not security
        began = time.monotonic()
        events, labels = generate_dataset(n, seed=int(run), start_ms=int(time.time() * 1000))
        for sent, (event, label) in enumerate(zip(events, labels.tolist(), strict=True)):
            event["id"] = f"{run}-{event['id']}"
            if rng.random() < GARBAGE_SHARE:
                value = rng.randbytes(rng.randint(0, 12))
            else:
                value = encoder.encode(event)
                truth[str(event["id"])] = int(label)
            ahead = sent / rate - (time.monotonic() - began)
            if ahead > 0.001:
                producer.poll(ahead)
            produce(producer, topology.input.topic, value, str(event["id"]).encode())
        if producer.flush(60):
            raise StreamerError("demo events were not all acknowledged within 60 s")
    except BaseException as exc:  # reported by the live view
        errors.append(exc)


@dataclass(frozen=True)
class Live:
    """What the live view watches: the agent, and the controller and feedback if any."""

    agent: RunningAgent
    controller: RunningController | None = None
    feedback: Feedback | None = None

    def failed(self) -> bool:
        return any(
            part is not None and part.error is not None
            for part in (self.agent, self.controller, self.feedback)
        )

    def ready(self) -> bool:
        """The agent owns input partitions, the controller (if any) partition 0."""
        controller = self.controller
        return bool(self.agent.agent.assigned) and (
            controller is None or controller.controller.publishing
        )

    def wait_until_ready(self, timeout_s: float) -> None:
        """Until `ready` (so the first events are not served late), something failed or the
        timeout passed."""
        deadline = time.monotonic() + timeout_s
        while not self.ready() and not self.failed() and time.monotonic() < deadline:
            time.sleep(0.05)

    def settled(self, served: int) -> bool:
        """Every output read, its reward sent and joined by the controller."""
        if self.feedback is None or self.controller is None:
            return True
        f = self.feedback
        joined = _joined(self.controller.controller.metrics)
        return f.read >= served and f.pending == 0 and joined >= f.sent.total


def _live_view(
    live: Live,
    events: int,
    began: float,
    echo: Callable[[str], None],
    errors: list[BaseException],
) -> None:
    """A progress line a second until every event is served and, when the loop is closed,
    its reward joined and the controller's last weights in force, or until something failed."""
    agent = live.agent.agent
    metrics = live.controller.controller.metrics if live.controller is not None else None
    interval = live.controller.controller.bandit.update_interval_s if live.controller else None
    ending = Ending(events, interval)
    stats = agent.stats
    last_done, last_t, last_counts = 0, began, _served_counts(agent)
    deadline = began + max(events / 500.0, 120.0)
    while not errors and not live.failed():
        if ending.all_served_at is None and time.monotonic() >= deadline:
            break
        time.sleep(1.0)
        stats = agent.stats  # a snapshot of the agent's metrics
        counts = _served_counts(agent)
        done = stats.served + stats.dead_letters
        now = time.monotonic()
        line = LiveLine(
            elapsed=now - began,
            served=stats.served,
            dead_letters=stats.dead_letters,
            rate=(done - last_done) / (now - last_t),
            variants=_live_variants(agent, last_counts, counts, metrics),
            rewards=None if metrics is None else _joined(metrics),
        )
        echo(format_live_line(line))
        last_done, last_t, last_counts = done, now, counts
        if ending.over(now, done, partial(live.settled, stats.served)):
            return
    if ending.all_served_at is None and not errors and not live.failed():
        errors.append(
            TimeoutError(
                f"only {stats.served + stats.dead_letters} of {events} events were served in time"
            )
        )


@dataclass
class Ending:
    """When the live view ends: once every event is served (or dead-lettered); with a
    controller (`interval_s`, its update interval) once every reward is also sent and joined
    (at most SETTLE_TIMEOUT_S later), and one update interval after that, so the summary
    shows the weights that learned from every reward."""

    events: int
    interval_s: float | None
    all_served_at: float | None = None
    settled_at: float | None = None

    def over(self, now: float, done: int, settled: Callable[[], bool]) -> bool:
        """Whether to stop at `now`, with `done` events served or dead-lettered; `settled`
        tells whether every reward is sent and joined."""
        if done < self.events:
            return False
        if self.all_served_at is None:
            self.all_served_at = now
        if self.interval_s is None:
            return True
        if self.settled_at is None and (settled() or now - self.all_served_at >= SETTLE_TIMEOUT_S):
            self.settled_at = now
        return (
            self.settled_at is not None
            and now - self.settled_at >= self.interval_s + SETTLE_MARGIN_S
        )


def _joined(metrics: ControllerMetrics) -> int:
    return int(metrics.value("streamer_controller_rewards_total", result="joined"))


def _mean_rewards(metrics: ControllerMetrics) -> dict[str, float]:
    """Served variant -> its mean reward in the controller's evidence (those with any)."""
    return {name: mean for name, (_, mean) in _evidence(metrics).items()}


def _evidence(metrics: ControllerMetrics) -> dict[str, tuple[float, float]]:
    """Served variant -> (rewards, mean reward) in the controller's evidence (those with any)."""
    pulls = metrics.by_label("streamer_controller_pulls", "variant")
    means = metrics.by_label("streamer_controller_mean_reward", "variant")
    return {name: (n, means.get(name, 0.0)) for name, n in pulls.items() if n > 0}


def _served_counts(agent: Agent) -> dict[str, int]:
    """Served variant -> outputs it has served so far (from the agent's metrics)."""
    return {
        v.name: int(
            agent.metrics.value("streamer_predictions_total", variant=v.name, shadow="false")
        )
        for v in agent.topology.served
    }


def _live_variants(
    agent: Agent,
    before: Mapping[str, int],
    after: Mapping[str, int],
    metrics: ControllerMetrics | None,
) -> list[VariantLive]:
    latest = agent.variants.latest  # what the next batch is served with
    versions = {name: model.version for name, model in latest.models.items()}
    means = _mean_rewards(metrics) if metrics is not None else {}
    return live_variants(latest.router.weights, versions, before, after, means)


def live_variants(
    weights: Mapping[str, float],
    versions: Mapping[str, str],
    before: Mapping[str, int],
    after: Mapping[str, int],
    means: Mapping[str, float] | None = None,
) -> list[VariantLive]:
    """Each variant of `after` (served variant -> outputs so far) with its weight (absent:
    disabled), model version, the outputs it served since the `before` counts and its mean
    reward (absent from `means`: none yet)."""
    return [
        VariantLive(
            name=name,
            weight=weights.get(name),
            served=count - before.get(name, 0),
            version=versions.get(name, "?"),
            mean_reward=(means or {}).get(name),
        )
        for name, count in after.items()
    ]


def format_live_line(line: LiveLine) -> str:
    """`t=  3.0s served 14,512 dl 145  5,010 ev/s | champion w0.90 89% v fraud_v1 | ...`:
    per served variant its weight (`off` while disabled), its share of the outputs since the
    previous line (`-` when there were none) and the model version it serves. With a
    controller, the rewards it joined so far follow the rate (`rw 1,234`) and each variant's
    mean reward its version (`r0.974`, `r-` before any)."""
    head = (
        f"t={line.elapsed:5.1f}s served {line.served:>6,} dl {line.dead_letters:>3,}"
        f" {line.rate:>6,.0f} ev/s"
    )
    if line.rewards is not None:
        head += f" rw {line.rewards:>6,}"
    total = sum(v.served for v in line.variants)
    parts = [head]
    for v in line.variants:
        weight = "off  " if v.weight is None else f"w{v.weight:.2f}"
        share = f"{v.served / total:>3.0%}" if total else "  -"
        part = f"{v.name} {weight} {share} v {v.version}"
        if line.rewards is not None:
            part += " r-" if v.mean_reward is None else f" r{v.mean_reward:.3f}"
        parts.append(part)
    return " | ".join(parts)


def _end_offsets(topology: Topology) -> dict[int, int]:
    """Where this run's outputs will start, per partition of the output topic."""
    consumer = _reader(topology)
    topic = topology.output.topic
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        return retrying(
            lambda: {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in partitions
            },
            30.0,
        )
    finally:
        consumer.close()


def _reader(topology: Topology) -> Consumer:
    return make_consumer(topology.kafka, "streamer-demo-reader")  # assign()ed, never commits


def _summarise(
    topology: Topology,
    agent: Agent,
    events: int,
    start: dict[int, int],
    seconds: float,
) -> DemoSummary:
    """Read back this run's outputs for exact latency and the served variant split."""
    stats = agent.stats
    decoder = make_decoder(topology.output.format, topology.output.schema_)
    consumer = _reader(topology)
    consumer.assign([TopicPartition(topology.output.topic, p, o) for p, o in start.items()])
    latencies: list[int] = []
    variants: Counter[str] = Counter()
    versions: defaultdict[str, Counter[str]] = defaultdict(Counter)
    deadline = time.monotonic() + 30
    while len(latencies) < stats.served and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 0.5):
            if msg.error():
                continue
            value = decoder.decode(msg.value())
            latencies.append(value["ts_predicted"] - value["ts_event"])
            variants[value["variant"]] += 1
            versions[value["variant"]][str(value["model_version"])] += 1
    consumer.close()
    lat = np.array(latencies or [0], dtype=np.float64)
    span = (stats.last_output_at or 0) - (stats.first_output_at or 0)
    shadow_scored = sum(
        agent.metrics.registry.get_sample_value(
            "streamer_predictions_total", {"variant": v.name, "shadow": "true"}
        )
        or 0.0
        for v in topology.shadows
    )
    return DemoSummary(
        events=events,
        served=stats.served,
        dead_letters=dict(stats.dead_letter_reasons),
        seconds=seconds,
        throughput=stats.served / span if span > 0 else 0.0,
        latency_ms={
            q: float(np.percentile(lat, p))
            for q, p in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))
        },
        variants=dict(variants),
        versions={name: dict(counts) for name, counts in versions.items()},
        shadow_scored=int(shadow_scored),
    )


def format_summary(s: DemoSummary) -> str:
    """The summary block printed at the end of `streamer demo`."""
    dead = ", ".join(f"{k} {v}" for k, v in sorted(s.dead_letters.items())) or "none"
    split = ", ".join(
        f"{k} {v} ({v / max(s.served, 1):.0%})" for k, v in sorted(s.variants.items())
    )
    lat = s.latency_ms
    return "\n".join(
        [
            "summary",
            f"  events in        {s.events}",
            f"  predictions out  {s.served}  ({split})",
            f"  model versions   {format_versions(s.versions)}",
            f"  shadow scored    {s.shadow_scored}",
            f"  dead letters     {sum(s.dead_letters.values())}  ({dead})",
            f"  served rate      {s.throughput:,.0f} events/s (first to last output; "
            f"{s.seconds:.1f}s wall)",
            f"  latency (event -> prediction)  p50 {lat['p50']:.0f} ms  p95 {lat['p95']:.0f} ms  "
            f"p99 {lat['p99']:.0f} ms  max {lat['max']:.0f} ms",
            *([] if s.bandit is None else format_bandit(s.bandit)),
        ]
    )


def format_bandit(b: BanditSummary) -> list[str]:
    """The summary's lines about the closed loop."""
    means = (
        ", ".join(f"{name} {mean:.4f} ({n})" for name, (n, mean) in sorted(b.rewards.items()))
        or "none"
    )
    split = ", ".join(f"{name} {w:.2f}" for name, w in sorted(b.weights.items())) or "none"
    updates = f"{b.updates} controller update{'' if b.updates == 1 else 's'}"
    lines = [
        f"  rewards sent     {b.rewards_sent}  (1 when the prediction was right; "
        f"{b.joined} joined by the controller)",
        f"  mean reward      {means}",
    ]
    this_run = {name: float(n) for name, (n, _) in b.rewards.items()}
    if any(abs(n - this_run.get(name, 0.0)) >= 0.5 for name, (n, _) in b.evidence.items()):
        # It resumed from what earlier runs taught it: that is what the split rests on.
        learned = ", ".join(
            f"{name} {mean:.4f} ({n:.0f})" for name, (n, mean) in sorted(b.evidence.items())
        )
        lines.append(f"  learned so far   {learned}  (the controller's evidence)")
    lines.append(f"  final split      {split}  ({updates})")
    return lines


def format_versions(versions: Mapping[str, Mapping[str, int]]) -> str:
    """`challenger 1, champion fraud_v1`; a variant that served several versions (one was
    added or pinned while the demo ran) lists each with its outputs: `challenger 1 (12) 2 (18)`."""
    return (
        ", ".join(f"{name} {_versions_of(counts)}" for name, counts in sorted(versions.items()))
        or "none"
    )


def _versions_of(counts: Mapping[str, int]) -> str:
    ordered = sorted(counts, key=version_key)
    if len(ordered) == 1:
        return ordered[0]
    return " ".join(f"{v} ({counts[v]})" for v in ordered)
