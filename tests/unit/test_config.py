"""The topology model: defaults, derived values, secrets and immutability."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr, ValidationError

from streamer.config import (
    BOOTSTRAP_ENV,
    BatchingSpec,
    InputSpec,
    KafkaSettings,
    Topology,
    VariantSpec,
    load_topology,
)
from streamer.errors import ConfigError, ConfigErrors


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


def test_defaults() -> None:
    t = topology()
    assert t.batching.max_batch_size == 512
    assert t.batching.max_wait_ms == 5
    assert t.batching.max_in_flight_batches == 4
    assert t.guarantee == "at_least_once"
    assert t.metrics.port == 9100
    assert t.kafka.bootstrap_servers == "localhost:9092"
    assert t.kafka.config == {}
    assert t.input.format == "json"
    assert t.input.schema_ is None
    assert t.output.format == "json"
    assert t.lake.format == "json"
    assert t.routing.strategy == "static"
    assert t.routing.control_topic is None
    assert t.bandit is None
    assert t.outputs is None
    assert t.topics.partitions == 6
    assert t.topics.replication_factor == 1
    assert t.source is None
    (v,) = t.variants
    assert (v.weight, v.shadow, v.version) == (0.0, False, None)


def test_bandit_defaults() -> None:
    t = topology(
        routing={"strategy": "bandit", "control_topic": "ctl"}, bandit={"feedback_topic": "fb"}
    )
    assert t.bandit is not None
    assert t.bandit.policy == "thompson"
    assert t.bandit.min_weight == 0.02
    assert t.bandit.decay == 1.0


def test_metrics_port_may_be_disabled() -> None:
    assert topology(metrics={"port": None}).metrics.port is None
    assert topology(metrics={"port": 0}).metrics.port == 0


def test_served_weights_are_normalised() -> None:
    t = topology(variants=variants(3.0, 1.0, shadow=("s",)))
    assert t.served_weights() == pytest.approx({"a": 0.75, "b": 0.25})
    assert sum(t.served_weights().values()) == pytest.approx(1.0)
    assert [v.name for v in t.served] == ["a", "b"]
    assert [v.name for v in t.shadows] == ["s"]


def test_served_weights_keep_zero_weight_variants() -> None:
    t = topology(variants=variants(0.9, 0.1, 0.0))
    assert t.served_weights() == pytest.approx({"a": 0.9, "b": 0.1, "c": 0.0})


def test_single_served_variant_gets_everything() -> None:
    assert topology(variants=variants(None)).served_weights() == {"a": 1.0}
    assert topology(variants=variants(0.3, shadow=("s",))).served_weights() == {"a": 1.0}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (variants(0.0, 0.0), "positive sum"),
        (variants(None, None), "positive sum"),
        (variants(shadow=("s",)), "not a shadow"),
        (variants(1.0, -1.0), "greater than or equal to 0"),
        (variants(1.0, float("nan")), "finite number"),
        (variants(1.0, float("inf")), "finite number"),
        (variants(1.0, 1.0)[:1] * 2, "duplicate variant name"),
    ],
)
def test_bad_weights_rejected(spec: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        topology(variants=spec)


def test_group_id() -> None:
    assert topology().group_id == "fraud.agent"
    assert topology(name="fraud-eu.v2").group_id == "fraud-eu.v2.agent"


def test_all_topics() -> None:
    assert topology().all_topics() == ["tx", "scores", "lake", "tx-dlq"]
    with_control = topology(routing={"control_topic": "ctl"})
    assert with_control.all_topics() == ["tx", "scores", "lake", "tx-dlq", "ctl"]
    bandit = topology(
        routing={"strategy": "bandit", "control_topic": "ctl"}, bandit={"feedback_topic": "fb"}
    )
    assert bandit.all_topics() == ["tx", "scores", "lake", "tx-dlq", "ctl", "fb"]
    assert len(set(bandit.all_topics())) == len(bandit.all_topics())


def test_redacted_hides_secrets() -> None:
    kafka = KafkaSettings(
        bootstrap_servers="b1:9093",
        config={
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "svc-streamer",
            "sasl.password": "hunter2-very-secret",
            "ssl.key.password": "keypass-42",
            "sasl.oauthbearer.client.secret": "oauth-shh",
        },
    )
    redacted = kafka.redacted()
    shown = f"{redacted} {redacted!r} {list(redacted.values())}"
    for secret in ("hunter2-very-secret", "keypass-42", "oauth-shh"):
        assert secret not in shown
    assert isinstance(redacted["sasl.password"], SecretStr)
    assert redacted["sasl.password"].get_secret_value() == "hunter2-very-secret"
    assert redacted["security.protocol"] == "SASL_SSL"
    assert redacted["sasl.username"] == "svc-streamer"
    assert redacted["bootstrap.servers"] == "b1:9093"
    # The real client config must still carry the secret, librdkafka needs it.
    assert kafka.client_config()["sasl.password"] == "hunter2-very-secret"


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


def test_unknown_keys_are_errors_at_every_level() -> None:
    with pytest.raises(ValidationError, match="batchin"):
        topology(batchin={})
    with pytest.raises(ValidationError, match="max_batch"):
        topology(batching={"max_batch": 8})
    with pytest.raises(ValidationError, match="weigth"):
        topology(variants=[{"name": "a", "model": "/m.onnx", "weigth": 1}])


def test_schema_key_and_field_name() -> None:
    by_alias = InputSpec.model_validate({"topic": "t", "format": "avro", "schema": "/s.avsc"})
    by_name = InputSpec.model_validate({"topic": "t", "format": "avro", "schema_": "/s.avsc"})
    assert by_alias == by_name
    assert by_alias.schema_ == Path("/s.avsc")


def test_variant_name_checked() -> None:
    with pytest.raises(ValidationError, match="valid variant name"):
        VariantSpec(name="-leading-dash", model=Path("/m.onnx"))


def _write(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def test_load_sets_source_and_resolves_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    (tmp_path / "conf").mkdir()
    spec = minimal(
        input={"topic": "tx", "format": "avro", "schema": "schemas/tx.avsc"},
        variants=[{"name": "a", "model": "../models/a.onnx"}],
    )
    path = _write(tmp_path / "conf" / "t.yaml", spec)
    t = load_topology(path)
    assert t.source == path
    assert t.input.schema_ == tmp_path / "conf" / "schemas" / "tx.avsc"
    assert t.variants[0].model == tmp_path / "models" / "a.onnx"
    assert t.kafka.bootstrap_servers == "localhost:9092"
    assert "source" not in t.model_dump()


def test_load_errors_name_file_and_key(tmp_path: Path) -> None:
    spec = minimal(variants=variants(1.0, float("inf")), batching={"max_batch_size": 0})
    path = _write(tmp_path / "t.yaml", spec)
    with pytest.raises(ConfigErrors) as info:
        load_topology(path)
    errors = info.value.errors
    assert {(e.file, e.key) for e in errors} == {
        (str(path), "variants[1].weight"),
        (str(path), "batching.max_batch_size"),
    }
    assert all("\n" not in str(e) for e in errors)
    assert len(str(info.value).splitlines()) == 2


def test_config_error_renders_one_line() -> None:
    assert str(ConfigError("t.yaml", "input.topic", "bad")) == "t.yaml: input.topic: bad"
    assert str(ConfigError("t.yaml", "", "file not found")) == "t.yaml: file not found"
