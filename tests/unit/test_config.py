"""The topology model: what its defaults do, derived values, immutability and errors.

Rejections that `streamer validate` reports are tested in test_validate.py and redaction in
test_redaction.py; the cases here are the ones they do not cover.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from streamer.codecs import make_decoder, make_encoder
from streamer.config import (
    BOOTSTRAP_ENV,
    METRICS_HOST_ENV,
    BatchingSpec,
    KafkaSettings,
    Topology,
    load_topology,
)
from streamer.errors import ConfigError, ConfigErrors
from streamer.kafka.local import LocalKafka


def minimal(**overrides: Any) -> dict[str, Any]:
    """The fewest keys a topology needs."""
    spec: dict[str, Any] = {
        "name": "fraud",
        "input": {"topic": "tx"},
        "features": ["amount", "hour"],
        "variants": [{"name": "champion", "model": "/models/v1.onnx"}],
        "output": {"topic": "scores"},
        "lake": {"topic": "lake"},
        "dead_letter": {"topic": "tx-dlq"},
    }
    spec.update(overrides)
    return spec


def topology(**overrides: Any) -> Topology:
    return Topology.model_validate(minimal(**overrides))


def variants(*weights: float | None, shadow: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    names = ["a", "b", "c", "d"]
    out: list[dict[str, Any]] = []
    for name, weight in zip(names, weights, strict=False):
        variant: dict[str, Any] = {"name": name, "model": f"/m/{name}.onnx"}
        if weight is not None:
            variant["weight"] = weight
        out.append(variant)
    out += [{"name": s, "model": f"/m/{s}.onnx", "shadow": True} for s in shadow]
    return out


def _write(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_minimal_file_serves_json_from_the_local_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    t = load_topology(_write(tmp_path / "t.yaml", minimal()))
    event = {"id": "tx-1", "amount": 1.5, "hour": 3}
    encoded = make_encoder(t.output.format, t.output.schema_).encode(event)
    assert make_decoder(t.input.format, t.input.schema_).decode(encoded) == event
    # The default bootstrap reaches the broker `streamer kafka start` runs by default.
    assert t.kafka.bootstrap_servers.rpartition(":")[2] == str(LocalKafka().port)
    assert t.served_weights() == {"champion": 1.0}  # one variant needs no weight


def test_served_weights_are_relative_shares_of_the_served_variants() -> None:
    t = topology(variants=variants(3.0, 1.0, 0.0, shadow=("s",)))
    weights = t.served_weights()
    assert set(weights) == {"a", "b", "c"}  # zero-weight variants stay, shadows are not served
    assert weights["a"] == pytest.approx(3 * weights["b"]) and weights["c"] == 0.0
    assert [v.name for v in t.served] == ["a", "b", "c"]
    assert [v.name for v in t.shadows] == ["s"]
    assert topology(variants=variants(0.3, shadow=("s",))).served_weights() == {"a": 1.0}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (variants(0.0, 0.0), "positive sum"),
        (variants(None, None), "positive sum"),
        (variants(1.0, float("nan")), "finite number"),
    ],
)
def test_weights_that_route_nowhere_are_rejected(spec: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        topology(variants=spec)


def test_group_id_is_shared_by_the_agents_of_one_topology_only() -> None:
    assert topology().group_id == topology(features=["hour"]).group_id == "fraud.agent"
    assert topology(name="fraud-eu.v2").group_id == "fraud-eu.v2.agent"


def test_all_topics() -> None:
    assert topology().all_topics() == ["tx", "scores", "lake", "tx-dlq"]
    with_control = topology(routing={"control_topic": "ctl"})
    assert with_control.all_topics() == ["tx", "scores", "lake", "tx-dlq", "ctl", "ctl.status"]
    bandit = topology(
        routing={"strategy": "bandit", "control_topic": "ctl"}, bandit={"feedback_topic": "fb"}
    )
    assert bandit.all_topics() == [
        "tx",
        "scores",
        "lake",
        "tx-dlq",
        "ctl",
        "ctl.status",
        "fb",
        "ctl.bandit",
    ]


def test_client_config_bootstrap_wins_over_config() -> None:
    kafka = KafkaSettings(bootstrap_servers="right:9092", config={"bootstrap.servers": "wrong:1"})
    assert kafka.client_config()["bootstrap.servers"] == "right:9092"


def test_models_are_frozen() -> None:
    t = topology()
    with pytest.raises(ValidationError):
        t.name = "other"
    with pytest.raises(ValidationError):
        t.batching.max_batch_size = 1
    with pytest.raises(ValidationError):
        t.variants[0].weight = 0.5
    with pytest.raises(ValidationError):
        t.kafka.bootstrap_servers = "elsewhere:9092"
    assert t.name == "fraud"


def test_frozen_models_are_hashable_values() -> None:
    a = BatchingSpec(max_batch_size=8, max_wait_ms=1)
    assert a == BatchingSpec(max_batch_size=8, max_wait_ms=1)
    assert hash(a) == hash(BatchingSpec(max_batch_size=8, max_wait_ms=1))
    assert a != BatchingSpec(max_batch_size=8, max_wait_ms=2)


def test_source_is_set_on_load_and_never_written_out(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.yaml", minimal())
    t = load_topology(path)
    assert t.source == path
    assert "source" not in t.model_dump()


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("batching.max_in_flight_batches", 0, "greater than or equal to 1"),
        ("topics.partitions", 0, "greater than or equal to 1"),
        ("input.format", "xml", "'avro' or 'json'"),
        ("features", [], "at least 1 item"),
        ("name", "-fraud", "not a valid topology name"),
        ("routing.control_topic", "a b", "not a valid Kafka topic name"),
        ("bandit.min_weight", 1, "less than 1"),
        ("bandit.decay", 0, "greater than 0"),
        ("kafka", "localhost:9092", "valid dictionary"),
    ],
)
def test_a_bad_value_is_one_line_naming_file_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: object, fragment: str
) -> None:
    monkeypatch.setenv(BOOTSTRAP_ENV, "env-broker:9092")  # must not mask a broken kafka key
    spec = minimal(
        routing={"strategy": "bandit", "control_topic": "ctl"}, bandit={"feedback_topic": "fb"}
    )
    *parents, last = key.split(".")
    section = spec
    for name in parents:
        section = section.setdefault(name, {})
    section[last] = value
    path = _write(tmp_path / "t.yaml", spec)
    with pytest.raises(ConfigErrors) as info:
        load_topology(path)
    (line,) = str(info.value).splitlines()
    assert line.startswith(f"{path}: {key}: ") and fragment in line, line


def test_every_bad_value_of_a_file_is_reported(tmp_path: Path) -> None:
    spec = minimal(variants=variants(1.0, float("inf")), batching={"max_batch_size": 0})
    path = _write(tmp_path / "t.yaml", spec)
    with pytest.raises(ConfigErrors) as info:
        load_topology(path)
    errors = info.value.errors
    assert {(e.file, e.key) for e in errors} == {
        (str(path), "variants[1].weight"),
        (str(path), "batching.max_batch_size"),
    }
    assert len(str(info.value).splitlines()) == 2


def test_config_error_renders_one_line() -> None:
    assert str(ConfigError("t.yaml", "input.topic", "bad")) == "t.yaml: input.topic: bad"
    assert str(ConfigError("t.yaml", "", "file not found")) == "t.yaml: file not found"


def test_environment_variables_fill_values_and_an_unset_one_names_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_USER", "svc-fraud")
    monkeypatch.setenv("KAFKA_PASSWORD", "s3cr3t-from-env")
    spec = minimal(
        kafka={
            "bootstrap_servers": "broker:9093",
            "config": {"sasl.username": "${KAFKA_USER}", "sasl.password": "${KAFKA_PASSWORD}"},
        },
        output={"topic": "scores-${KAFKA_USER}"},
    )
    t = load_topology(_write(tmp_path / "t.yaml", spec))
    assert t.kafka.config == {"sasl.username": "svc-fraud", "sasl.password": "s3cr3t-from-env"}
    assert t.output.topic == "scores-svc-fraud"
    assert "s3cr3t" not in str(t.kafka.redacted())
    spec["lake"] = {"topic": "${NOT_SET_ANYWHERE}"}
    path = _write(tmp_path / "unset.yaml", spec)
    with pytest.raises(ConfigErrors) as info:
        load_topology(path)
    assert (
        str(info.value) == f"{path}: lake.topic: environment variable NOT_SET_ANYWHERE is not set"
    )


def test_a_setting_can_come_from_a_file_and_a_missing_one_names_its_key(
    tmp_path: Path,
) -> None:
    (tmp_path / "password").write_text("from-a-file\n")
    spec = minimal(kafka={"config": {"sasl.password_file": "password"}})
    t = load_topology(_write(tmp_path / "t.yaml", spec))
    assert t.kafka.config == {"sasl.password": "from-a-file"}
    spec = minimal(kafka={"config": {"ssl.key.password_file": "/no/such/file"}})
    path = _write(tmp_path / "missing.yaml", spec)
    with pytest.raises(ConfigErrors) as info:
        load_topology(path)
    assert str(info.value) == (
        f"{path}: kafka.config.ssl.key.password_file: cannot read /no/such/file: "
        "No such file or directory"
    )


def test_endpoints_listen_on_localhost_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "t.yaml", minimal())
    assert load_topology(path).metrics.host == "127.0.0.1"
    monkeypatch.setenv(METRICS_HOST_ENV, "0.0.0.0")
    assert load_topology(path).metrics.host == "0.0.0.0"


def test_the_lake_can_be_turned_off_unless_something_needs_it() -> None:
    off = topology(lake={"topic": "lake", "enabled": False})
    assert off.agent_topics() == ["tx", "scores", "tx-dlq"]
    with pytest.raises(ValidationError, match="shadow variants write only to the lake"):
        topology(lake={"topic": "lake", "enabled": False}, variants=variants(1.0, shadow=("s",)))
    with pytest.raises(ValidationError, match="a bandit section needs the lake"):
        topology(
            lake={"topic": "lake", "enabled": False},
            routing={"control_topic": "ctl"},
            bandit={"feedback_topic": "fb"},
        )
