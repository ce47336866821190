"""Reaction time: from a reward's arrival to the control record that includes it.

    .venv/bin/python -m benchmarks.reaction [--trials N] [--interval S]
        [--out benchmarks/results/reaction.json]

Starts its own broker and one controller (in-process) over two variants whose evidence is
kept even, so that every burst of rewards moves the weights. Each trial writes 200 served
decisions to the lake, waits until the controller has read them, then writes their rewards
(all 1, for one variant, the two variants taking turns) at a random moment (0 to 1.5
update intervals after the previous record), and measures the time from the last reward's
timestamp to the first control record whose evidence counts them. A record waits for
update_interval_s since the previous one, so the figure lies between the processing time
and the interval plus the processing time.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from benchmarks.throughput import SCHEMA, local_broker, machine_facts
from streamer.config import Topology
from streamer.control.record import parse
from streamer.control.topic import TopicReader
from streamer.demo.data import FEATURES
from streamer.demo.train import ensure_models
from streamer.kafka.admin import create_topics
from streamer.testing import RunningController, unique

DEFAULT_OUT = Path("benchmarks/results/reaction.json")
BURST = 200
ROOT = Path(__file__).resolve().parents[1]


def topology(bootstrap: str, interval: float) -> Topology:
    name = unique("reaction")
    model = ensure_models(ROOT / "models")["fraud_v2"]
    return Topology.model_validate(
        {
            "name": name,
            "kafka": {"bootstrap_servers": bootstrap},
            "input": {"topic": f"{name}-in", "format": "avro", "schema": str(SCHEMA)},
            "features": list(FEATURES),
            "variants": [
                {"name": "a", "model": str(model), "weight": 1.0},
                {"name": "b", "model": str(model), "weight": 1.0},
            ],
            "output": {"topic": f"{name}-out", "format": "json"},
            "lake": {"topic": f"{name}-lake", "format": "json"},
            "dead_letter": {"topic": f"{name}-dlq"},
            "routing": {"strategy": "bandit", "control_topic": f"{name}-control"},
            "bandit": {
                "feedback_topic": f"{name}-feedback",
                "update_interval_s": interval,
                "min_rewards": 10,
                "min_weight": 0.01,
                "reward_window_s": 600,
                "seed": 1,
                "metrics_port": None,
            },
            "metrics": {"port": None},
            "topics": {"partitions": 2},
        }
    )


def lake_value(event_id: str, variant: str) -> bytes:
    return json.dumps(
        {"id": event_id, "variant": variant, "shadow": False, "propensity": 0.5}
    ).encode()


def run(trials: int, interval: float) -> dict[str, Any]:
    latencies: list[float] = []
    with local_broker() as bootstrap:
        t = topology(bootstrap, interval)
        create_topics(t)
        assert t.bandit is not None and t.routing.control_topic is not None
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
        control = TopicReader(t.kafka, t.routing.control_topic)
        control.start()
        list(control.read_to_end())
        with RunningController(t) as running:
            controller = running.controller
            deadline = time.monotonic() + 60
            while not controller.publishing:
                assert time.monotonic() < deadline, "the controller never owned partition 0"
                time.sleep(0.05)
            counted = 0
            pause = random.Random(5)
            for trial in range(trials + 1):  # the first burst only warms up
                variant = "ab"[trial % 2]
                ids = [f"t{trial}-{i}" for i in range(BURST)]
                for event_id in ids:
                    producer.produce(t.lake.topic, lake_value(event_id, variant), event_id.encode())
                producer.flush(30)
                time.sleep(pause.uniform(0.0, 1.5 * interval))  # rewards come at any moment
                wait_read = time.monotonic() + 60
                while controller.stats.records < 2 * BURST * trial + BURST:
                    assert time.monotonic() < wait_read, f"trial {trial}: the lake was not read"
                    time.sleep(0.01)
                stamps: list[int] = []

                def delivered(err: object, msg: Any, stamps: list[int] = stamps) -> None:
                    stamps.append(msg.timestamp()[1])

                for event_id in ids:
                    body = json.dumps({"id": event_id, "reward": 1}).encode()
                    producer.produce(
                        t.bandit.feedback_topic, body, event_id.encode(), on_delivery=delivered
                    )
                producer.flush(30)
                arrived = max(stamps) / 1000.0
                counted += BURST
                seen = None
                wait_until = time.monotonic() + 10 * interval + 30
                while seen is None and time.monotonic() < wait_until:
                    for entry in control.poll(0.1):
                        record = parse(entry.value)
                        n = sum(v["n"] for v in (record.stats or {}).values())
                        if record.source == "controller" and n >= counted:
                            seen = entry.timestamp_ms / 1000.0
                if seen is None:
                    raise RuntimeError(f"trial {trial}: no control record counted the burst")
                if trial:
                    latencies.append(seen - arrived)
            running.stop()
        control.close()
    ordered = sorted(latencies)
    return {
        "machine": machine_facts(),
        "update_interval_s": interval,
        "trials": trials,
        "burst": BURST,
        "latency_s": {
            "median": round(statistics.median(ordered), 3),
            "max": round(ordered[-1], 3),
            "min": round(ordered[0], 3),
            "all": [round(x, 3) for x in latencies],
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--interval", type=float, nargs="+", default=[1.0, 5.0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    results = [run(args.trials, interval) for interval in args.interval]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for r in results:
        print(f"update_interval_s {r['update_interval_s']}: {r['latency_s']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
