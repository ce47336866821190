"""Poison input through `streamer run`: a few hundred generated events, valid ones and every
kind of poison, each accounted for exactly once as an output or as a dead letter with the
reason its defect names, while the agent neither crashes nor stalls."""

from __future__ import annotations

import io
import json
import random
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import fastavro
import orjson
import pytest
from confluent_kafka import Producer

from streamer.codecs import decode_batch, make_decoder
from streamer.config import Topology
from streamer.demo.data import FEATURES, generate_transactions
from streamer.kafka.clients import produce as produce_one
from streamer.records import (
    DETAIL_HEADER,
    ERROR_HEADER,
    OFFSET_HEADER,
    PARTITION_HEADER,
    TOPIC_HEADER,
    Headers,
)
from streamer.testing import committed_offsets, consume, end_offsets
from tests.conftest import SCHEMAS, TRANSACTION, TopologyFactory
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

INDEX = "poison.index"
"""Our own header on every produced event: dead letters keep it, which names their event."""
N = 400
LARGE = 900_000
"""A value near the 1 MB record limit (librdkafka's message.max.bytes, the topic's default)."""
BIG_KEY = 10_000
HUGE_KEY = 600_000
"""Served, its output repeats the key as the id: over 1 MB, so `too_large`."""
SCHEMA: dict[str, Any] = json.loads((SCHEMAS / "transaction.avsc").read_text())


@dataclass(frozen=True)
class Event:
    kind: str
    key: bytes | None
    value: bytes | None
    reason: str | None
    """The expected dead-letter reason; None: served."""
    served_id: str = ""
    """The output's id, when served."""


Make = Callable[[int, dict[str, Any], random.Random], Event]


def _avro(record: dict[str, Any], fields: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    schema = fastavro.parse_schema({**SCHEMA, "fields": fields})
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def _key(i: int) -> bytes:
    return f"k-{i}".encode()


def _bad_key(i: int) -> bytes:
    return b"\xff\xfe" + _key(i) + b"\xc0"  # not UTF-8


def _big_key(i: int) -> bytes:
    return _key(i) + b"-" + b"K" * BIG_KEY


def _served(kind: str, key: bytes | None, value: bytes, tx: dict[str, Any]) -> Event:
    served_id = key.decode("utf-8", "backslashreplace") if key else str(tx["id"])
    return Event(kind, key, value, None, served_id)


def _common(
    encode: Callable[[dict[str, Any]], bytes], garbage: Callable[[int], bytes]
) -> dict[str, Make]:
    """Kinds of both formats: keys of every sort, empty and oversized values."""

    def non_finite(i: int, tx: dict[str, Any], rng: random.Random) -> Event:
        bad = rng.choice([float("nan"), float("inf"), float("-inf"), 1e39, -1e39])
        field = rng.choice(["amount", "age_days", "merchant_risk"])
        return Event("non_finite", _key(i), encode({**tx, field: bad}), "non_finite")

    return {
        "valid": lambda i, tx, _: _served("valid", _key(i), encode(tx), tx),
        "valid_no_key": lambda i, tx, _: _served("valid_no_key", None, encode(tx), tx),
        "valid_empty_key": lambda i, tx, _: _served("valid_empty_key", b"", encode(tx), tx),
        "valid_bad_key": lambda i, tx, _: _served("valid_bad_key", _bad_key(i), encode(tx), tx),
        "valid_big_key": lambda i, tx, _: _served("valid_big_key", _big_key(i), encode(tx), tx),
        "huge_key": lambda i, tx, _: Event(
            "huge_key", _key(i) + b"H" * HUGE_KEY, encode(tx), "too_large"
        ),
        "null_value": lambda i, tx, _: Event("null_value", _key(i), None, "empty_value"),
        "empty_value": lambda i, tx, _: Event("empty_value", _key(i), b"", "empty_value"),
        "non_finite": non_finite,
        "garbage": lambda i, tx, rng: Event(
            "garbage", _key(i), garbage(rng.randint(1, 300)), "undecodable"
        ),
        "garbage_bad_key": lambda i, tx, rng: Event(
            "garbage_bad_key", _bad_key(i), garbage(rng.randint(1, 300)), "undecodable"
        ),
        "garbage_big_key": lambda i, tx, rng: Event(
            "garbage_big_key", _big_key(i), garbage(rng.randint(1, 300)), "undecodable"
        ),
        "large_garbage": lambda i, tx, _: Event(
            "large_garbage", _key(i), garbage(LARGE), "undecodable"
        ),
    }


def _not_decodable(fmt: Literal["avro", "json"], rng: random.Random) -> Callable[[int], bytes]:
    """Random bytes that this format's decoder rejects as undecodable."""
    decoder = make_decoder(fmt, SCHEMAS / "transaction.avsc")

    def garbage(size: int) -> bytes:
        while True:
            value = rng.randbytes(size)
            rejected = decode_batch([value], decoder, FEATURES).rejected
            if rejected and rejected[0][1].reason == "undecodable":
                return value

    return garbage


def avro_kinds(rng: random.Random) -> dict[str, Make]:
    fields: list[dict[str, Any]] = SCHEMA["fields"]

    def truncated(i: int, tx: dict[str, Any], rng: random.Random) -> Event:
        good = TRANSACTION.encode(tx)
        return Event("truncated", _key(i), good[: rng.randint(1, len(good) - 1)], "undecodable")

    return {
        **_common(TRANSACTION.encode, _not_decodable("avro", rng)),
        "valid_large_value": lambda i, tx, _: _served(
            "valid_large_value", _key(i), TRANSACTION.encode({**tx, "country": "C" * LARGE}), tx
        ),
        "truncated": truncated,
        "trailing_bytes": lambda i, tx, rng: Event(
            "trailing_bytes",
            _key(i),
            TRANSACTION.encode(tx) + rng.randbytes(rng.randint(1, 8)),
            "undecodable",
        ),
        "newer_schema": lambda i, tx, _: Event(
            "newer_schema",
            _key(i),
            _avro({**tx, "channel": "web"}, [*fields, {"name": "channel", "type": "string"}]),
            "undecodable",
        ),
        "older_schema": lambda i, tx, _: Event(
            "older_schema", _key(i), _avro(tx, fields[:-1]), "undecodable"
        ),
        "json_on_avro": lambda i, tx, _: Event(
            "json_on_avro", _key(i), json.dumps(tx).encode(), "undecodable"
        ),
    }


def json_kinds(rng: random.Random) -> dict[str, Make]:
    def dumps(record: Any) -> bytes:
        return json.dumps(record).encode()

    def with_raw(tx: dict[str, Any], field: str, raw: bytes) -> bytes:
        return dumps({**tx, field: "@@"}).replace(b'"@@"', raw, 1)

    def missing(i: int, tx: dict[str, Any], rng: random.Random) -> Event:
        gone = rng.choice(FEATURES)
        record = {k: v for k, v in tx.items() if k != gone}
        return Event("missing", _key(i), dumps(record), "missing_field")

    def wrong_type(i: int, tx: dict[str, Any], rng: random.Random) -> Event:
        bad = rng.choice(["12.5", True, None, [1.0], {"value": 1.0}, ""])
        record = {**tx, rng.choice(FEATURES): bad}
        return Event("wrong_type", _key(i), dumps(record), "wrong_type")

    def not_a_record(i: int, tx: dict[str, Any], rng: random.Random) -> Event:
        top = rng.choice([[tx], list(tx.values()), 42, 1.5, "text", None, True])
        return Event("not_a_record", _key(i), dumps(top), "not_a_record")

    def not_utf8(i: int, tx: dict[str, Any], rng: random.Random) -> Event:
        bad = rng.choice([b"\xff", b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xf5\x80\x80\x80"])
        return Event(
            "not_utf8", _key(i), dumps({**tx, "note": "@@"}).replace(b"@@", bad), "undecodable"
        )

    def truncated(i: int, tx: dict[str, Any], rng: random.Random) -> Event:
        whole = dumps(tx)
        return Event("truncated", _key(i), whole[: rng.randint(1, len(whole) - 1)], "undecodable")

    def huge_number(i: int, tx: dict[str, Any], rng: random.Random) -> Event:
        raw = rng.choice(
            [b"1e400", b"-1e39", b"NaN", b"Infinity", b"-Infinity", str(10**400).encode()]
        )
        return Event("huge_number", _key(i), with_raw(tx, rng.choice(FEATURES), raw), "non_finite")

    def surrogate_id(i: int, tx: dict[str, Any], _: random.Random) -> Event:
        # A lone surrogate escape: the id must still route between the two variants.
        record = {**tx, "id": f"{tx['id']}-\ud800"}
        return Event("surrogate_id", None, dumps(record), None, f"{tx['id']}-\\ud800")

    deep = b"[" * 10_000 + b"]" * 10_000
    return {
        **_common(dumps, _not_decodable("json", rng)),
        "valid_large_value": lambda i, tx, _: _served(
            "valid_large_value", _key(i), dumps({**tx, "blob": "x" * LARGE}), tx
        ),
        "valid_extras": lambda i, tx, _: _served(
            "valid_extras",
            _key(i),
            dumps({"nested": {"a": [1, {"b": None}]}, "flag": True, **tx, "list": []}),
            tx,
        ),
        "surrogate_id": surrogate_id,
        "missing": missing,
        "wrong_type": wrong_type,
        "huge_number": huge_number,
        "not_a_record": not_a_record,
        "not_utf8": not_utf8,
        "utf16": lambda i, tx, _: Event(
            "utf16", _key(i), json.dumps(tx).encode("utf-16"), "undecodable"
        ),
        "truncated": truncated,
        "not_json": lambda i, tx, _: Event(
            "not_json", _key(i), b"amount=1.5&hour=3", "undecodable"
        ),
        "deep": lambda i, tx, _: Event(
            "deep", _key(i), with_raw(tx, "nested", deep), "undecodable"
        ),
        "many_digits": lambda i, tx, _: Event(
            "many_digits", _key(i), with_raw(tx, "amount", b"9" * 5000), "undecodable"
        ),
    }


LARGE_KINDS = {"huge_key", "large_garbage", "valid_large_value"}
"""Produced twice each; the other kinds fill the rest at random, half of it valid."""


def generate(fmt: Literal["avro", "json"], seed: int) -> list[Event]:
    rng = random.Random(seed)
    kinds = avro_kinds(rng) if fmt == "avro" else json_kinds(rng)
    small = sorted(set(kinds) - LARGE_KINDS)
    plan = [k for k in sorted(LARGE_KINDS) for _ in range(2)] + small
    plan += [
        rng.choice(["valid", *small]) if rng.random() < 0.5 else "valid"
        for _ in range(N - len(plan))
    ]
    rng.shuffle(plan)
    transactions = generate_transactions(N, seed=seed)
    return [
        kinds[kind](i, {**transactions[i], "id": f"ev-{i}"}, rng) for i, kind in enumerate(plan)
    ]


def produce_events(bootstrap: str, topic: str, events: list[Event]) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
    )
    errors: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    for i, event in enumerate(events):
        headers: Headers = [(INDEX, str(i).encode())]
        produce_one(
            producer, topic, event.value, event.key, headers=headers, on_delivery=on_delivery
        )
    assert producer.flush(60) == 0 and not errors, errors[:3]


def _stopped_line(log: str) -> dict[str, int]:
    match = re.search(
        r"stopped: (\d+) consumed, (\d+) served, (\d+) dead letters, (\d+) batches", log
    )
    assert match, log[-3000:]
    return dict(
        zip(["consumed", "served", "dead", "batches"], map(int, match.groups()), strict=True)
    )


@pytest.mark.parametrize("fmt", ["avro", "json"])
def test_generated_poison_is_served_or_dead_lettered_exactly_once_by_streamer_run(
    make_topology: TopologyFactory,
    kafka: str,
    demo_models: dict[str, Path],
    tmp_path: Path,
    fmt: Literal["avro", "json"],
) -> None:
    overrides: dict[str, Any] = {}
    if fmt == "json":
        overrides["input"] = lambda name: {"topic": f"{name}-in", "format": "json"}
    topology: Topology = make_topology(
        # Two served variants: every event's id is hashed to route it.
        variants=[
            {"name": "a", "model": str(demo_models["fraud_v2"]), "weight": 0.5},
            {"name": "b", "model": str(demo_models["fraud_v3"]), "weight": 0.5},
        ],
        **overrides,
    )
    events = generate(fmt, seed=11 if fmt == "avro" else 12)
    produce_events(kafka, topology.input.topic, events)
    partitions = topology.topics.partitions
    ends = end_offsets(kafka, topology.input.topic, partitions)
    assert sum(ends.values()) == N

    log = tmp_path / "agent.log"
    with log.open("w") as stderr:
        agent = subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", str(topology.source)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:

        def all_committed() -> bool:
            assert agent.poll() is None, (
                f"agent exited {agent.returncode}: {log.read_text()[-3000:]}"
            )
            committed = committed_offsets(
                kafka, topology.group_id, topology.input.topic, partitions
            )
            return all(committed[p] == end for p, end in ends.items() if end > 0)

        wait_for(all_committed, "the agent to commit every input offset", timeout_s=120)
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(60)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]

    expected_dead = [i for i, e in enumerate(events) if e.reason is not None]
    expected_served = {e.served_id: i for i, e in enumerate(events) if e.reason is None}
    assert len(expected_served) == N - len(expected_dead)  # ids are unique
    inputs = consume(kafka, topology.input.topic, N)
    where = {int(r.headers[INDEX]): (r.partition, r.offset) for r in inputs}
    assert len(where) == N
    outputs = consume(kafka, topology.output.topic, len(expected_served))
    dead = consume(kafka, topology.dead_letter.topic, len(expected_dead))

    # Every dead letter: its own event, once, untouched, for the reason its poison names.
    dead_indices = [int(r.headers[INDEX]) for r in dead]
    unexpected = sorted(set(dead_indices) ^ set(expected_dead))
    assert not unexpected, [  # served when poison, or dead-lettered when valid
        (i, events[i].kind, (events[i].value or b"")[:80]) for i in unexpected
    ]
    assert sorted(dead_indices) == expected_dead, "a dead letter is doubled"
    for record, i in zip(dead, dead_indices, strict=True):
        event = events[i]
        assert (record.key, record.value) == (event.key, event.value), event.kind
        assert record.headers[ERROR_HEADER].decode() == event.reason, (
            event.kind,
            record.headers[DETAIL_HEADER],
        )
        assert record.headers[DETAIL_HEADER]
        assert record.headers[TOPIC_HEADER].decode() == topology.input.topic
        partition, offset = where[i]
        assert int(record.headers[PARTITION_HEADER]) == partition
        assert int(record.headers[OFFSET_HEADER]) == offset

    # Every valid event: served once, under its id and key, by one of the two variants.
    served = [orjson.loads(r.value or b"") for r in outputs]
    ids = Counter(o["id"] for o in served)
    assert set(ids) == set(expected_served) and max(ids.values()) == 1, "lost or repeated"
    for record, output in zip(outputs, served, strict=True):
        event = events[expected_served[output["id"]]]
        assert record.key == event.key, event.kind
        assert output["variant"] in {"a", "b"}
    assert len(outputs) + len(dead) == N
    stopped = _stopped_line(text)
    assert (stopped["consumed"], stopped["served"], stopped["dead"]) == (
        N,
        len(expected_served),
        len(expected_dead),
    )
