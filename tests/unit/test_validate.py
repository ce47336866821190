"""`streamer validate`: each broken topology fails with one clear line naming file and key."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from streamer.cli import app
from streamer.config import BOOTSTRAP_ENV, load_topology
from streamer.validate import validate
from tests.onnx_models import OnnxFactory

FEATURES = ["amount", "age_days", "hour", "merchant_risk"]

TRANSACTION: dict[str, Any] = {
    "type": "record",
    "name": "Transaction",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "ts", "type": "long"},
        {"name": "amount", "type": "double"},
        {"name": "age_days", "type": "double"},
        {"name": "hour", "type": "int"},
        {"name": "merchant_risk", "type": "double"},
        {"name": "country", "type": "string"},
        {"name": "discount", "type": ["null", "double"], "default": None},
    ],
}
BASE_OUTPUT_FIELDS: list[dict[str, Any]] = [
    {"name": "id", "type": "string"},
    {"name": "variant", "type": "string"},
    {"name": "model_version", "type": "string"},
    {"name": "ts_event", "type": "long"},
    {"name": "ts_predicted", "type": "long"},
]
MODEL_OUTPUT_FIELDS: list[dict[str, Any]] = [
    {"name": "label", "type": "long"},
    {"name": "probabilities", "type": {"type": "array", "items": "float"}},
]
LAKE_EXTRA_FIELDS: list[dict[str, Any]] = [
    {"name": "shadow", "type": "boolean"},
    {"name": "features", "type": {"type": "array", "items": "float"}},
    {"name": "latency_ms", "type": "double"},
    {"name": "topology", "type": "string"},
    {"name": "propensity", "type": "double"},
]


def _record(name: str, fields: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": fields}


@dataclass
class Workspace:
    """models/, schemas/ and topologies/ side by side; topologies refer to ../models etc."""

    root: Path

    @property
    def topologies(self) -> Path:
        return self.root / "topologies"

    def write(self, name: str, spec: Any) -> Path:
        path = self.topologies / f"{name}.yaml"
        path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
        return path


def base_spec() -> dict[str, Any]:
    """A valid topology: Avro in, JSON out, one served variant and one shadow."""
    return {
        "name": "fraud",
        "kafka": {"bootstrap_servers": "broker-in-file:9092"},
        "input": {"topic": "tx", "format": "avro", "schema": "../schemas/transaction.avsc"},
        "features": list(FEATURES),
        "batching": {"max_batch_size": 64, "max_wait_ms": 5},
        "variants": [
            {"name": "champion", "model": "../models/good.onnx", "weight": 0.9},
            {"name": "challenger", "model": "../models/good2.onnx", "weight": 0.1},
        ],
        "output": {"topic": "scores", "format": "json"},
        "lake": {"topic": "lake", "format": "json"},
        "dead_letter": {"topic": "tx-dlq"},
    }


@pytest.fixture
def ws(tmp_path: Path, tiny_model: OnnxFactory) -> Workspace:
    root = tmp_path / "project"
    models, schemas = root / "models", root / "schemas"
    schemas.mkdir(parents=True)
    (root / "topologies").mkdir()
    tiny_model(models / "good.onnx")
    tiny_model(models / "good2.onnx")
    tiny_model(models / "three_wide.onnx", width=3)
    tiny_model(models / "int_input.onnx", dtype="int64")
    tiny_model(models / "probabilities_only.onnx", outputs=("probabilities",))
    tiny_model(models / "reordered.onnx", outputs=("probabilities", "label"))
    (models / "random.onnx").write_bytes(os.urandom(512))
    (schemas / "transaction.avsc").write_text(json.dumps(TRANSACTION))
    (schemas / "not_avro.avsc").write_text(
        json.dumps(_record("Broken", [{"name": "amount", "type": "decimal-ish"}]))
    )
    (schemas / "not_json.avsc").write_text('{"type": "record", "name": ')
    (schemas / "score_without_outputs.avsc").write_text(
        json.dumps(_record("Score", BASE_OUTPUT_FIELDS))
    )
    (schemas / "score.avsc").write_text(
        json.dumps(_record("Score", BASE_OUTPUT_FIELDS + MODEL_OUTPUT_FIELDS))
    )
    lake_without_propensity = BASE_OUTPUT_FIELDS + MODEL_OUTPUT_FIELDS + LAKE_EXTRA_FIELDS[:-1]
    (schemas / "lake_without_propensity.avsc").write_text(
        json.dumps(_record("Lake", lake_without_propensity))
    )
    (schemas / "lake.avsc").write_text(
        json.dumps(_record("Lake", BASE_OUTPUT_FIELDS + MODEL_OUTPUT_FIELDS + LAKE_EXTRA_FIELDS))
    )
    return Workspace(root)


def invoke(path: Path | str) -> Result:
    return CliRunner().invoke(app, ["validate", str(path)])


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def assert_clean_failure(result: Result, expected_errors: int) -> list[str]:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = error_lines(result)
    assert len(lines) == expected_errors, result.output
    assert result.stdout == "", "errors go to stderr, nothing to stdout"
    return lines


Mutation = Callable[[dict[str, Any]], None]


def _locate(spec: dict[str, Any], path: str) -> tuple[Any, str | int]:
    """The container holding a dotted path (`a.b`, `variants[1].model`) and the last key."""
    parts: list[str | int] = [
        int(p) if p.isdigit() else p for p in path.replace("[", ".").replace("]", "").split(".")
    ]
    target: Any = spec
    for part in parts[:-1]:
        target = target.setdefault(part, {}) if isinstance(target, dict) else target[part]
    return target, parts[-1]


def _set(path: str, value: Any) -> Mutation:
    def mutate(spec: dict[str, Any]) -> None:
        target, last = _locate(spec, path)
        target[last] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(spec: dict[str, Any]) -> None:
        target, last = _locate(spec, path)
        del target[last]

    return mutate


def _all(*mutations: Mutation) -> Mutation:
    def mutate(spec: dict[str, Any]) -> None:
        for m in mutations:
            m(spec)

    return mutate


# (id, mutation of base_spec, expected text right after "error: <file>: ", a message fragment)
BROKEN: list[tuple[str, Mutation, str, str]] = [
    ("missing-input", _delete("input"), "input: ", "required key is missing"),
    ("missing-features", _delete("features"), "features: ", "required key is missing"),
    (
        "typo-key",
        _set("batchin", {"max_batch_size": 8}),
        "batchin: ",
        "unknown key",
    ),
    (
        "nested-typo-key",
        _set("batching.max_wait", 5),
        "batching.max_wait: ",
        "unknown key",
    ),
    ("invalid-topic", _set("input.topic", "bad topic!"), "input.topic: ", "valid Kafka topic"),
    (
        "topic-too-long",
        _set("dead_letter.topic", "x" * 250),
        "dead_letter.topic: ",
        "not a valid Kafka topic name",
    ),
    (
        "batch-size-zero",
        _set("batching.max_batch_size", 0),
        "batching.max_batch_size: ",
        "greater than or equal to 1",
    ),
    (
        "max-wait-negative",
        _set("batching.max_wait_ms", -1),
        "batching.max_wait_ms: ",
        "greater than or equal to 0",
    ),
    ("avro-input-no-schema", _delete("input.schema"), "input.schema: ", "avro needs a schema"),
    (
        "avro-output-no-schema",
        _set("output.format", "avro"),
        "output.schema: ",
        "avro needs a schema",
    ),
    (
        "schema-file-missing",
        _set("input.schema", "../schemas/nope.avsc"),
        "input.schema: ",
        "nope.avsc: schema file not found",
    ),
    (
        "schema-not-avro",
        _set("input.schema", "../schemas/not_avro.avsc"),
        "input.schema: ",
        "invalid Avro schema",
    ),
    (
        "schema-not-json",
        _set("input.schema", "../schemas/not_json.avsc"),
        "input.schema: ",
        "not JSON",
    ),
    (
        "feature-not-in-schema",
        _set("features", ["amount", "age_days", "minute", "merchant_risk"]),
        "features[2]: ",
        "'minute' is not a field of",
    ),
    (
        "feature-is-string",
        _set("features", ["amount", "age_days", "country", "merchant_risk"]),
        "features[2]: ",
        "'country' has Avro type string, not a number",
    ),
    (
        "feature-is-nullable",
        _set("features", ["amount", "age_days", "hour", "discount"]),
        "features[3]: ",
        "not a number",
    ),
    (
        "duplicate-feature",
        _set("features", ["amount", "amount", "hour", "merchant_risk"]),
        "features: ",
        "duplicate feature(s): amount",
    ),
    (
        "model-missing",
        _set("variants[1].model", "../models/absent.onnx"),
        "variants[1].model: ",
        "absent.onnx: model file not found",
    ),
    (
        "model-not-onnx",
        _set("variants[1].model", "../models/random.onnx"),
        "variants[1].model: ",
        "not a loadable ONNX model",
    ),
    (
        "model-width",
        _set("variants[1].model", "../models/three_wide.onnx"),
        "variants[1].model: ",
        "takes 3 features, the topology lists 4",
    ),
    (
        "model-int-input",
        _set("variants[1].model", "../models/int_input.onnx"),
        "variants[1].model: ",
        "tensor(int64), expected tensor(float)",
    ),
    (
        "unknown-output",
        _all(_set("outputs", ["score"]), _delete("variants[1]")),
        "variants[0].model: ",
        "no output named 'score' (has label, probabilities)",
    ),
    (
        "variants-disagree-on-outputs",
        _set("variants[1].model", "../models/probabilities_only.onnx"),
        "variants[1].model: ",
        "has outputs probabilities, expected label, probabilities",
    ),
    (
        "duplicate-variant",
        _set("variants[1].name", "champion"),
        "variants: ",
        "duplicate variant name(s): champion",
    ),
    (
        "all-shadow",
        _all(_set("variants[0].shadow", True), _set("variants[1].shadow", True)),
        "variants: ",
        "at least one variant that is not a shadow",
    ),
    (
        "bad-variant-name",
        _set("variants[0].name", "has space"),
        "variants[0].name: ",
        "not a valid variant name",
    ),
    (
        "negative-weight",
        _set("variants[1].weight", -0.5),
        "variants[1].weight: ",
        "greater than or equal to 0",
    ),
    ("infinite-weight", _set("variants[1].weight", float("inf")), "variants[1].weight: ", "finite"),
    (
        "bandit-without-control-topic",
        _all(
            _set("routing", {"strategy": "bandit"}),
            _set("bandit", {"feedback_topic": "fb"}),
        ),
        "routing: ",
        "strategy bandit needs a control_topic",
    ),
    (
        "bandit-without-bandit-section",
        _set("routing", {"strategy": "bandit", "control_topic": "ctl"}),
        "routing.strategy bandit needs a bandit section",
        "",
    ),
    (
        "output-schema-lacks-model-outputs",
        _set(
            "output",
            {
                "topic": "scores",
                "format": "avro",
                "schema": "../schemas/score_without_outputs.avsc",
            },
        ),
        "output.schema: ",
        "lacks field(s) label, probabilities",
    ),
    (
        "lake-schema-lacks-propensity",
        _set(
            "lake",
            {
                "topic": "lake",
                "format": "avro",
                "schema": "../schemas/lake_without_propensity.avsc",
            },
        ),
        "lake.schema: ",
        "lacks field(s) propensity",
    ),
    (
        "same-topic-in-and-out",
        _set("output.topic", "tx"),
        "output.topic 'tx' is the same topic as input.topic",
        "",
    ),
    (
        "bad-guarantee",
        _set("guarantee", "exactly_twice"),
        "guarantee: ",
        "'at_least_once' or 'exactly_once'",
    ),
    (
        "bad-metrics-port",
        _set("metrics.port", 70000),
        "metrics.port: ",
        "less than or equal to 65535",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "head", "fragment"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN]
)
def test_broken_topology_fails_with_one_line(
    ws: Workspace, mutate: Mutation, head: str, fragment: str
) -> None:
    spec = base_spec()
    mutate(spec)
    path = ws.write("broken", spec)
    (line,) = assert_clean_failure(invoke(path), expected_errors=1)
    assert line.startswith(f"error: {path}: {head}"), line
    assert fragment in line


def test_cases_are_distinct() -> None:
    assert len(BROKEN) >= 12
    assert len({c[0] for c in BROKEN}) == len(BROKEN)


def test_yaml_syntax_error_names_the_line(ws: Workspace) -> None:
    path = ws.write("syntax", "name: fraud\ninput: {topic: tx\nfeatures: [amount]\n")
    (line,) = assert_clean_failure(invoke(path), expected_errors=1)
    assert line.startswith(f"error: {path}: line 3: "), line


def test_yaml_tab_indentation_names_the_line(ws: Workspace) -> None:
    path = ws.write("tabs", "name: fraud\ninput:\n\ttopic: tx\n")
    (line,) = assert_clean_failure(invoke(path), expected_errors=1)
    assert line.startswith(f"error: {path}: line 3: "), line


@pytest.mark.parametrize("text", ["- name: fraud\n- input: tx\n", "just a string\n", "", "42\n"])
def test_top_level_must_be_a_mapping(ws: Workspace, text: str) -> None:
    path = ws.write("not_a_mapping", text)
    (line,) = assert_clean_failure(invoke(path), expected_errors=1)
    assert line == f"error: {path}: must be a YAML mapping of topology keys"


def test_missing_topology_file(ws: Workspace) -> None:
    path = ws.topologies / "absent.yaml"
    (line,) = assert_clean_failure(invoke(path), expected_errors=1)
    assert line == f"error: {path}: file not found"


def test_every_problem_gets_its_own_line(ws: Workspace) -> None:
    spec = base_spec()
    spec["features"] = ["amount", "age_days", "minute", "merchant_risk"]
    spec["variants"][1]["model"] = "../models/absent.onnx"
    spec["variants"].append({"name": "wide", "model": "../models/three_wide.onnx", "weight": 1})
    path = ws.write("several", spec)
    lines = assert_clean_failure(invoke(path), expected_errors=3)
    heads = sorted(line.removeprefix(f"error: {path}: ").split(":")[0] for line in lines)
    assert heads == ["features[2]", "variants[1].model", "variants[2].model"]


def test_several_config_errors_are_all_reported(ws: Workspace) -> None:
    spec = base_spec()
    spec["batching"]["max_batch_size"] = 0
    spec["input"]["topic"] = "no spaces allowed"
    spec["batchin"] = {}
    path = ws.write("config_errors", spec)
    lines = assert_clean_failure(invoke(path), expected_errors=3)
    keys = {line.removeprefix(f"error: {path}: ").split(":")[0] for line in lines}
    assert keys == {"batching.max_batch_size", "input.topic", "batchin"}


def test_valid_topology_passes_with_one_line(ws: Workspace) -> None:
    path = ws.write("valid", base_spec())
    result = invoke(path)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        f"{path}: ok: fraud: 4 features, variants champion, challenger"
    ]


def test_same_outputs_in_another_order_are_accepted_and_published_in_one_order(
    ws: Workspace,
) -> None:
    spec = base_spec()
    spec["variants"][1]["model"] = "../models/reordered.onnx"
    path = ws.write("reordered", spec)
    result = validate(path)
    assert result.problems == []
    assert [m.output_names for m in result.models.values()] == [("label", "probabilities")] * 2


def test_valid_topology_with_avro_sinks_bandit_and_shadow(ws: Workspace) -> None:
    spec = base_spec()
    spec["variants"].append({"name": "candidate", "model": "../models/good.onnx", "shadow": True})
    spec["output"] = {"topic": "scores", "format": "avro", "schema": "../schemas/score.avsc"}
    spec["lake"] = {"topic": "lake", "format": "avro", "schema": "../schemas/lake.avsc"}
    spec["routing"] = {"strategy": "bandit", "control_topic": "ctl"}
    spec["bandit"] = {"policy": "ucb1", "feedback_topic": "fb", "min_weight": 0.05}
    spec["guarantee"] = "exactly_once"
    path = ws.write("full", spec)
    result = invoke(path)
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"{path}: ok: fraud: ")
    assert "candidate (shadow)" in line


def test_demo_models_fit_the_shipped_schemas(ws: Workspace, demo_models: dict[str, Path]) -> None:
    schemas = Path(__file__).resolve().parents[2] / "schemas"
    spec = base_spec()
    spec["input"]["schema"] = str(schemas / "transaction.avsc")
    spec["variants"] = [
        {"name": "champion", "model": str(demo_models["fraud_v1"]), "weight": 0.9},
        {"name": "challenger", "model": str(demo_models["fraud_v2"]), "weight": 0.1},
        {"name": "candidate", "model": str(demo_models["fraud_v3"]), "shadow": True},
    ]
    spec["output"] = {"topic": "s", "format": "avro", "schema": str(schemas / "fraud_score.avsc")}
    spec["lake"] = {"topic": "l", "format": "avro", "schema": str(schemas / "fraud_lake.avsc")}
    result = invoke(ws.write("demo", spec))
    assert result.exit_code == 0, result.output


def test_env_overrides_bootstrap_servers(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    path = ws.write("env", base_spec())
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    assert load_topology(path).kafka.bootstrap_servers == "broker-in-file:9092"
    monkeypatch.setenv(BOOTSTRAP_ENV, "kafka-a:9093,kafka-b:9093")
    topology = load_topology(path)
    assert topology.kafka.bootstrap_servers == "kafka-a:9093,kafka-b:9093"
    assert topology.kafka.client_config()["bootstrap.servers"] == "kafka-a:9093,kafka-b:9093"


def test_env_overrides_bootstrap_without_kafka_section(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = base_spec()
    del spec["kafka"]
    path = ws.write("no_kafka", spec)
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    assert load_topology(path).kafka.bootstrap_servers == "localhost:9092"
    monkeypatch.setenv(BOOTSTRAP_ENV, "ci-broker:29092")
    assert load_topology(path).kafka.bootstrap_servers == "ci-broker:29092"


def test_relative_paths_resolve_against_the_topology_file(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = base_spec()
    spec["variants"][1]["model"] = str(ws.root / "models" / "good2.onnx")  # absolute: kept
    ws.write("relative", spec)
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    shown = os.path.relpath(ws.topologies / "relative.yaml")  # given relative to the CWD
    topology = load_topology(shown)
    assert topology.input.schema_ == ws.root / "schemas" / "transaction.avsc"
    assert topology.variants[0].model == ws.root / "models" / "good.onnx"
    assert topology.variants[1].model == ws.root / "models" / "good2.onnx"
    assert topology.source == Path(shown)
    result = invoke(shown)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{shown}: ok: ")


def test_error_names_the_file_as_given(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = base_spec()
    spec["variants"][1]["model"] = "../models/absent.onnx"
    ws.write("given", spec)
    monkeypatch.chdir(ws.root)
    (line,) = assert_clean_failure(invoke("topologies/given.yaml"), expected_errors=1)
    expected_model = ws.root / "models" / "absent.onnx"
    assert line == (
        f"error: topologies/given.yaml: variants[1].model: {expected_model}: model file not found"
    )


# -- model directories and sampled shadows ----------------------------------------------------


def model_directory(ws: Workspace, tiny_model: OnnxFactory, *versions: int) -> Path:
    """models/fraud/<v>/model.onnx for each version; the directory itself even with none."""
    root = ws.root / "models" / "fraud"
    root.mkdir(parents=True, exist_ok=True)
    for v in versions:
        tiny_model(root / str(v) / "model.onnx")
    return root


def directory_spec(**champion: Any) -> dict[str, Any]:
    """base_spec with the champion served from the model directory models/fraud."""
    spec = base_spec()
    spec["variants"][0] = {"name": "champion", "model": "../models/fraud", "weight": 0.9}
    spec["variants"][0].update(champion)
    return spec


def warning_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning:")]


def test_a_model_directory_serves_its_highest_version(
    ws: Workspace, tiny_model: OnnxFactory
) -> None:
    root = model_directory(ws, tiny_model, 1, 2)
    path = ws.write("directory", directory_spec())
    result = invoke(path)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        f"{path}: ok: fraud: 4 features, variants champion [version 2 of 1, 2], challenger"
    ]
    checked = validate(path)
    assert checked.problems == [] and checked.warnings == []
    assert checked.versions["champion"] == ["1", "2"]
    assert checked.models["champion"].version == "2"
    assert checked.models["champion"].path == root / "2" / "model.onnx"


def test_versions_are_listed_in_numeric_order(ws: Workspace, tiny_model: OnnxFactory) -> None:
    model_directory(ws, tiny_model, 2, 10, 9)
    result = invoke(ws.write("numeric", directory_spec()))
    assert result.exit_code == 0, result.output
    assert "champion [version 10 of 2, 9, 10]" in result.stdout


def test_a_topology_version_pins_the_served_version(ws: Workspace, tiny_model: OnnxFactory) -> None:
    model_directory(ws, tiny_model, 1, 2)
    result = invoke(ws.write("pinned", directory_spec(version="1")))
    assert result.exit_code == 0, result.output
    assert "champion [version 1 of 1, 2]" in result.stdout


def test_a_broken_version_next_to_good_ones_is_a_warning(
    ws: Workspace, tiny_model: OnnxFactory
) -> None:
    root = model_directory(ws, tiny_model, 1, 2)
    (root / "3").mkdir()
    (root / "3" / "model.onnx").write_bytes(os.urandom(512))
    path = ws.write("broken_version", directory_spec())
    result = invoke(path)
    assert result.exit_code == 0, result.output
    assert error_lines(result) == []
    (line,) = warning_lines(result)
    assert line.startswith(f"warning: {path}: variants[0].model: version 3: "), line
    assert f"{root / '3' / 'model.onnx'}: not a loadable ONNX model" in line
    assert "champion [version 2 of 1, 2, 3]" in result.stdout


def test_an_older_version_with_other_outputs_is_a_warning(
    ws: Workspace, tiny_model: OnnxFactory
) -> None:
    root = model_directory(ws, tiny_model, 2)
    tiny_model(root / "1" / "model.onnx", outputs=("probabilities",))
    path = ws.write("old_outputs", directory_spec())
    result = invoke(path)
    assert result.exit_code == 0, result.output
    (line,) = warning_lines(result)
    assert line.startswith(f"warning: {path}: variants[0].model: version 1: "), line
    assert "has outputs probabilities, expected label, probabilities" in line


def test_a_model_directory_where_no_version_loads_is_an_error(
    ws: Workspace, tiny_model: OnnxFactory
) -> None:
    root = model_directory(ws, tiny_model)
    for v in ("1", "2"):
        (root / v).mkdir()
        (root / v / "model.onnx").write_bytes(b"garbage" * 64)
    path = ws.write("all_broken", directory_spec())
    (line,) = assert_clean_failure(invoke(path), expected_errors=1)
    assert line.startswith(f"error: {path}: variants[0].model: {root / '2' / 'model.onnx'}: ")
    assert "not a loadable ONNX model" in line


def test_an_empty_model_directory_is_an_error(ws: Workspace, tiny_model: OnnxFactory) -> None:
    root = model_directory(ws, tiny_model)
    (root / "latest").mkdir()  # not a version
    path = ws.write("empty_directory", directory_spec())
    (line,) = assert_clean_failure(invoke(path), expected_errors=1)
    assert line == f"error: {path}: variants[0].model: {root}: model directory has no N/model.onnx"


def test_a_topology_version_not_in_the_directory_is_an_error(
    ws: Workspace, tiny_model: OnnxFactory
) -> None:
    root = model_directory(ws, tiny_model, 1, 2)
    path = ws.write("pinned_absent", directory_spec(version="7"))
    (line,) = assert_clean_failure(invoke(path), expected_errors=1)
    assert line == f"error: {path}: variants[0].model: {root}: version 7 not found (has 1, 2)"


def test_sample_rate_on_a_served_variant_is_a_config_error(ws: Workspace) -> None:
    spec = base_spec()
    spec["variants"][1]["sample_rate"] = 0.5
    path = ws.write("sampled_served", spec)
    (line,) = assert_clean_failure(invoke(path), expected_errors=1)
    assert line.startswith(f"error: {path}: variants[1]"), line
    assert "sample_rate applies to shadow variants only" in line


@pytest.mark.parametrize(
    ("rate", "fragment"), [(1.5, "less than or equal to 1"), (-0.1, "greater than or equal to 0")]
)
def test_a_shadow_sample_rate_outside_0_to_1_is_a_config_error(
    ws: Workspace, rate: float, fragment: str
) -> None:
    spec = base_spec()
    spec["variants"].append(
        {"name": "candidate", "model": "../models/good.onnx", "shadow": True, "sample_rate": rate}
    )
    path = ws.write("sample_rate_range", spec)
    (line,) = assert_clean_failure(invoke(path), expected_errors=1)
    assert line.startswith(f"error: {path}: variants[2].sample_rate: "), line
    assert fragment in line


def test_a_sampled_shadow_validates(ws: Workspace) -> None:
    spec = base_spec()
    spec["variants"].append(
        {"name": "candidate", "model": "../models/good.onnx", "shadow": True, "sample_rate": 0.1}
    )
    path = ws.write("sampled_shadow", spec)
    result = invoke(path)
    assert result.exit_code == 0, result.output
    assert "candidate (shadow)" in result.stdout
    topology = validate(path).topology
    assert topology is not None
    assert topology.shadows[0].sample_rate == 0.1
