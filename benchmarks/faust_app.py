"""The Faust contender: a faust-streaming agent written the way its documentation shows.

    BENCH_SPEC='<contenders.Spec as JSON>' python -m benchmarks.faust_app worker -l warn

One agent over the input topic (raw bytes), per event: decode the Avro value (fastavro),
score it as one ONNX row (onnxruntime, the engine's session options), `await
out_topic.send(key=..., value=...)` the JSON output (the same record the engine writes).
Faust's own defaults otherwise (aiokafka client, its commit interval, one stream per
agent); the group is the app id. After `events` outputs it flushes its producer and stops
itself with SIGTERM: the worker then waits for its streams, commits and exits.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from typing import Any

import faust  # the bench extra

from benchmarks.contenders import Scorer, Spec

SPEC = Spec.from_json(os.environ["BENCH_SPEC"])

app = faust.App(
    SPEC.group,
    broker=f"kafka://{SPEC.bootstrap}",
    value_serializer="raw",
    key_serializer="raw",
    web_enabled=False,  # several workers run one after another; no port to collide on
    topic_partitions=6,
    consumer_auto_offset_reset="earliest",
    datadir=os.path.join(tempfile.gettempdir(), f"bench-faust-{SPEC.group}"),
)
in_topic = app.topic(SPEC.input, key_serializer="raw", value_serializer="raw")
out_topic = app.topic(SPEC.output, key_serializer="raw", value_serializer="raw")
scorer = Scorer(SPEC)
served = [0]


def announce(line: str) -> None:
    """To the real stdout: the worker redirects sys.stdout into its log."""
    out = sys.__stdout__
    assert out is not None
    out.write(line + "\n")
    out.flush()


@app.agent(in_topic)  # type: ignore[untyped-decorator,unused-ignore]
async def score(stream: Any) -> None:
    async for event in stream.events():
        ts_event = int(event.message.timestamp * 1000)
        value = scorer.score(event.key, event.value, ts_event)
        await out_topic.send(key=event.key, value=value)
        served[0] += 1
        if served[0] == SPEC.events:
            await app.producer.flush()
            announce(f'result {{"served": {served[0]}}}')
            os.kill(os.getpid(), signal.SIGTERM)


@app.task  # type: ignore[untyped-decorator,unused-ignore]
async def on_started() -> None:
    announce("ready")


if __name__ == "__main__":
    sys.argv[0] = "faust"
    app.main()
