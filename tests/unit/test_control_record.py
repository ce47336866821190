"""Control records: parsing their JSON, resolving them against a topology, who is obeyed."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import orjson
import pytest

from streamer.config import Topology
from streamer.control.record import (
    WEIGHT_TOLERANCE,
    ControlRecord,
    ControlRejected,
    default_record,
    obeys,
    parse,
    resolve,
)

DIRECTORIES: dict[str, list[str]] = {"a": ["1", "2", "10"]}
"""Variant a is a model directory with these versions; the rest are model files."""


def topology(*, strategy: str = "static", **variant_overrides: dict[str, Any]) -> Topology:
    """Served a (.5, a model directory), b (.3), c (.2); shadows s (sample .25) and t."""
    variants: dict[str, dict[str, Any]] = {
        "a": {"model": "/models/a", "weight": 0.5},
        "b": {"model": "/models/b.onnx", "weight": 0.3},
        "c": {"model": "/models/c.onnx", "weight": 0.2},
        "s": {"model": "/models/s.onnx", "shadow": True, "sample_rate": 0.25},
        "t": {"model": "/models/t.onnx", "shadow": True},
    }
    for name, extra in variant_overrides.items():
        variants[name] = {**variants[name], **extra}
    spec: dict[str, Any] = {
        "name": "fraud",
        "input": {"topic": "tx"},
        "features": ["amount", "hour"],
        "variants": [{"name": name, **v} for name, v in variants.items()],
        "output": {"topic": "scores"},
        "lake": {"topic": "lake"},
        "dead_letter": {"topic": "tx-dlq"},
        "routing": {"strategy": strategy, "control_topic": "ctl"},
    }
    if strategy == "bandit":
        spec["bandit"] = {"feedback_topic": "fb"}
    return Topology.model_validate(spec)


def record(**fields: Any) -> ControlRecord:
    """A record as `streamer control` would write it (weights default to a .5 b .3 c .2)."""
    fields.setdefault("weights", {"a": 0.5, "b": 0.3, "c": 0.2})
    return parse(orjson.dumps(fields))


def rejected(
    rec: ControlRecord | None, directories: Mapping[str, Collection[str]] = DIRECTORIES
) -> str:
    """The one-line reason `resolve` rejects `rec`."""
    with pytest.raises(ControlRejected) as exc:
        resolve(topology(), rec, directories)
    message = str(exc.value)
    assert message and "\n" not in message
    return message


# -- parse ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (b"", "empty value"),
        (b"{", "not JSON"),
        (b"weights=a:1", "not JSON"),
        (b"[1, 2]", "not a JSON object but list"),
        (b"3", "not a JSON object but int"),
        (b"null", "not a JSON object"),
        (b'"weights"', "not a JSON object but str"),
        (b"{}", "weights: Field required"),
        (b'{"weights": "a"}', "weights: "),
        (b'{"weights": {"a": "lots"}}', "weights.a: "),
        (b'{"weights": {"a": null}}', "weights.a: "),
        (b'{"weights": {"a": 1}, "disabled": "s"}', "disabled: "),
        (b'{"weights": {"a": 1}, "versions": ["2"]}', "versions: "),
        (b'{"weights": {"a": 1}, "versions": {"a": 2.5}}', "versions.a: "),
        (b'{"weights": {"a": 1}, "versions": {"a": true}}', "versions.a: "),
        (b'{"weights": {"a": 1}, "source": "robot"}', "source: "),
    ],
)
def test_parse_rejects_with_one_line(value: bytes, fragment: str) -> None:
    with pytest.raises(ControlRejected) as exc:
        parse(value)
    message = str(exc.value)
    assert "\n" not in message
    assert fragment in message, message


def test_parse_counts_further_problems_on_the_same_line() -> None:
    with pytest.raises(ControlRejected) as exc:
        parse(b'{"weights": "a", "disabled": "s", "source": "robot"}')
    message = str(exc.value)
    assert "\n" not in message
    assert message.endswith("(and 2 more)"), message


def test_parse_rejects_a_boolean_weight() -> None:
    with pytest.raises(ControlRejected, match=r"weights\.a"):
        parse(b'{"weights": {"a": true, "b": false}}')


def test_ts_is_informational_and_never_rejects_a_record() -> None:
    for ts in (b'"yesterday"', b"null", b"-1", b"[1]"):
        assert parse(b'{"weights": {"a": 1}, "ts": ' + ts + b"}").weights == {"a": 1.0}


def test_parse_ignores_unknown_keys_and_keeps_known_ones() -> None:
    parsed = parse(
        orjson.dumps(
            {
                "weights": {"a": 0.25, "b": 0.75},
                "policy": "manual",
                "ts": 1700000000000,
                "reason": "canary",
                "disabled": ["s"],
                "source": "cli",
                "stats": {"a": {"pulls": 3}},
                "added_later": {"anything": [1, 2]},
                "comment": "ignored",
            }
        )
    )
    assert parsed.weights == {"a": 0.25, "b": 0.75}
    assert parsed.policy == "manual" and parsed.reason == "canary"
    assert parsed.ts == 1700000000000
    assert parsed.disabled == ["s"]
    assert parsed.source == "cli"
    assert parsed.stats == {"a": {"pulls": 3}}
    assert "added_later" not in parsed.model_dump()
    assert b"added_later" not in parsed.to_json()


def test_parse_turns_integer_versions_into_text() -> None:
    parsed = parse(b'{"weights": {"a": 1}, "versions": {"a": 2, "b": "10"}}')
    assert parsed.versions == {"a": "2", "b": "10"}
    assert all(isinstance(v, str) for v in parsed.versions.values())


def test_a_record_survives_its_own_json() -> None:
    original = record(disabled=["s"], versions={"a": 2}, source="controller", policy="thompson")
    assert parse(original.to_json()) == original
    assert orjson.loads(original.to_json())["versions"] == {"a": "2"}


# -- resolve: rejections ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"weights": {"a": 0.5, "b": 0.3, "zz": 0.2}},
        {"disabled": ["zz"]},
        {"versions": {"zz": "1"}},
    ],
    ids=["weights", "disabled", "versions"],
)
def test_an_unknown_variant_is_rejected(fields: dict[str, Any]) -> None:
    message = rejected(record(**fields))
    assert message.startswith("unknown variant 'zz'"), message
    assert "a, b, c, s, t" in message


def test_a_shadow_given_a_weight_is_rejected() -> None:
    message = rejected(record(weights={"a": 0.5, "b": 0.3, "s": 0.2}))
    assert message == "s is a shadow and takes no weight"


def test_a_shadow_given_weight_zero_is_rejected_too() -> None:
    assert "s is a shadow" in rejected(record(weights={"a": 0.5, "b": 0.5, "s": 0.0}))


def test_a_negative_weight_is_rejected() -> None:
    message = rejected(record(weights={"a": 1.2, "b": -0.2}))
    assert message.startswith("weight of b is -0.2"), message


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_weight_that_is_not_finite_is_rejected(bad: float) -> None:
    # JSON has no NaN; a record built in code can still carry one.
    rec = ControlRecord(weights={"a": bad, "b": 0.5})
    message = rejected(rec)
    assert message.startswith("weight of a is"), message
    assert "finite" in message


@pytest.mark.parametrize(
    "weights",
    [
        {"a": 0.5, "b": 0.3},
        {"a": 0.5, "b": 0.3, "c": 0.3},
        {"a": 3.0, "b": 1.0},
        {},
        {"a": 0.5, "b": 0.3, "c": 0.2 + 2 * WEIGHT_TOLERANCE},
    ],
)
def test_weights_that_do_not_sum_to_1_are_rejected(weights: dict[str, float]) -> None:
    message = rejected(record(weights=weights))
    assert message.startswith("weights sum to "), message
    assert message.endswith(", not 1")


@pytest.mark.parametrize("off", [1e-7, -1e-7])
def test_a_sum_off_by_less_than_the_tolerance_is_accepted(off: float) -> None:
    plan = resolve(topology(), record(weights={"a": 0.5 + off, "b": 0.3, "c": 0.2}), DIRECTORIES)
    assert sum(plan.weights.values()) == pytest.approx(1.0, abs=1e-12)
    assert plan.weights["a"] == pytest.approx(0.5, abs=1e-6)


def test_pinning_a_model_file_variant_is_rejected() -> None:
    message = rejected(record(versions={"b": "1"}))
    assert message == "b serves a model file; only model directories pin"


def test_pinning_a_version_not_on_disk_is_rejected() -> None:
    assert rejected(record(versions={"a": "3"})) == "a has no version 3 (has 1, 2, 10)"
    assert rejected(record(versions={"a": "1"}), {"a": []}) == "a has no version 1 (has none)"


def test_disabling_every_served_variant_is_rejected() -> None:
    message = rejected(record(disabled=["a", "b", "c"]))
    assert message == "no enabled served variant has a weight above 0"


def test_all_enabled_served_weights_zero_is_rejected() -> None:
    # Every weight sits on a disabled variant: nothing would serve.
    message = rejected(record(weights={"a": 1.0, "b": 0.0, "c": 0.0}, disabled=["a"]))
    assert message == "no enabled served variant has a weight above 0"


# -- resolve: plans ------------------------------------------------------------------------


def test_no_record_is_the_topology_files_normalised_weights() -> None:
    t = topology(a={"weight": 5}, b={"weight": 3}, c={"weight": 2})
    plan = resolve(t, None, DIRECTORIES)
    assert plan.weights == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.2})
    assert plan.shadows == {"s": 0.25, "t": 1.0}
    assert plan.pins == {}
    assert default_record(t).policy == "file"
    assert resolve(t, default_record(t), DIRECTORIES) == plan


def test_a_single_served_variant_without_weight_gets_everything() -> None:
    spec = topology().model_dump()
    spec["variants"] = [{"name": "only", "model": "/models/only.onnx"}]
    plan = resolve(Topology.model_validate(spec), None, {})
    assert plan.weights == {"only": 1.0}
    assert plan.shadows == {}


def test_a_valid_record_sets_the_weights() -> None:
    plan = resolve(topology(), record(weights={"a": 0.1, "b": 0.9}), DIRECTORIES)
    # A served variant the record leaves out is enabled with weight 0.
    assert plan.weights == pytest.approx({"a": 0.1, "b": 0.9, "c": 0.0})
    assert plan.shadows == {"s": 0.25, "t": 1.0}


def test_a_disabled_served_variants_share_goes_to_the_rest_proportionally() -> None:
    plan = resolve(topology(), record(disabled=["a"]), DIRECTORIES)
    assert set(plan.weights) == {"b", "c"}
    assert plan.weights["b"] == pytest.approx(0.6)
    assert plan.weights["c"] == pytest.approx(0.4)
    assert sum(plan.weights.values()) == pytest.approx(1.0)


def test_a_disabled_shadow_drops_out_and_the_others_keep_their_sample_rate() -> None:
    plan = resolve(topology(), record(disabled=["t"]), DIRECTORIES)
    assert plan.shadows == {"s": 0.25}
    assert plan.weights == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.2})


def test_sample_rates_are_carried() -> None:
    t = topology(s={"sample_rate": 0.1}, t={"sample_rate": 0.0})
    assert resolve(t, None, DIRECTORIES).shadows == {"s": 0.1, "t": 0.0}
    assert resolve(t, record(), DIRECTORIES).shadows == {"s": 0.1, "t": 0.0}


def test_a_record_pins_a_model_directory_version() -> None:
    plan = resolve(topology(), record(versions={"a": 10}), DIRECTORIES)
    assert plan.pins == {"a": "10"}


def test_a_topology_version_is_a_default_pin_that_a_record_overrides() -> None:
    t = topology(a={"version": "1"}, b={"version": "v7"})  # b's is a model file's label
    assert resolve(t, None, DIRECTORIES).pins == {"a": "1"}
    assert resolve(t, record(), DIRECTORIES).pins == {"a": "1"}
    assert resolve(t, record(versions={"a": "2"}), DIRECTORIES).pins == {"a": "2"}


# -- obeys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "source", "obeyed"),
    [
        ("static", "controller", False),
        ("static", "cli", True),
        ("static", None, True),
        ("bandit", "controller", True),
        ("bandit", "cli", True),
        ("bandit", None, True),
    ],
)
def test_who_is_obeyed(strategy: str, source: str | None, obeyed: bool) -> None:
    rec = record() if source is None else record(source=source)
    assert rec.by_person is (source != "controller")
    assert obeys(topology(strategy=strategy), rec) is obeyed
