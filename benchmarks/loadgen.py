"""Open-loop load: demo events produced at a fixed rate, whatever the consumer does.

    python -m benchmarks.loadgen '{"bootstrap": ..., "topic": ..., "rate": R, "events": N}'

Event i is due at start + i / rate; whatever is due is produced at once, so a slow
consumer (or a stalled generator) never slows the offered load down. Each record's
timestamp (CreateTime) is the time it was *due*, not the time it was sent: latency measured
from it includes any delay in the generator itself, so it is never understated by a
generator that fell behind (no coordinated omission). Keys are distinct (`<prefix>-<i>`);
values cycle through a pool of pre-encoded Avro demo transactions. Prints one `result {...}`
line (JSON): produced, seconds, achieved rate, how far behind schedule it fell at most.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from streamer.codecs.avro import AvroEncoder
from streamer.demo.data import generate_transactions

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "transaction.avsc"
POOL = 20_000
TICK_S = 0.001


def generate(
    bootstrap: str, topic: str, rate: float, events: int, prefix: str = "ev"
) -> dict[str, Any]:
    encoder = AvroEncoder(SCHEMA)
    pool = [encoder.encode(e) for e in generate_transactions(min(events, POOL))]
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 1,
            "compression.type": "lz4",
            "enable.idempotence": True,
        }
    )
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Message | None) -> None:
        if err is not None:
            failures.append(str(err))

    start = time.time() + 0.01
    i = 0
    behind_max_s = 0.0
    while i < events:
        now = time.time()
        due = min(events, int((now - start) * rate) + 1)
        if due > i:
            behind_max_s = max(behind_max_s, now - (start + i / rate))
        while i < due:
            ts_ms = int((start + i / rate) * 1000)
            key = f"{prefix}-{i:010d}".encode()
            while True:
                try:
                    producer.produce(
                        topic, pool[i % len(pool)], key, timestamp=ts_ms, on_delivery=on_delivery
                    )
                    break
                except BufferError:
                    producer.poll(0.001)
            i += 1
        producer.poll(0)
        wait = start + i / rate - time.time()
        if wait > 0:
            time.sleep(min(wait, TICK_S))
    sent_s = time.time() - start
    if producer.flush(60) or failures:
        raise RuntimeError(f"load generator: delivery failed: {failures[:3]}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "produced": events,
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "start": round(start, 3),
        "seconds": round(sent_s, 3),
        "achieved_rate": round(events / sent_s, 1),
        "behind_max_ms": round(behind_max_s * 1000, 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(args[0])
    result = generate(
        spec["bootstrap"], spec["topic"], spec["rate"], spec["events"], spec.get("prefix", "ev")
    )
    print("result " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
