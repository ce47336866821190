"""`streamer validate`: every problem in a topology, its schemas and its models, one line each."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamer.codecs.avro import load_schema, record_fields
from streamer.config import Topology, load_topology
from streamer.drift import ProfileError, check_profile, load_profile
from streamer.errors import ConfigError, ConfigErrors
from streamer.models import Model, load_variant_models

NUMERIC_AVRO = {"int", "long", "float", "double"}
OUTPUT_FIELDS = ("id", "variant", "model_version", "ts_event", "ts_predicted")
LAKE_FIELDS = (*OUTPUT_FIELDS, "shadow", "features", "latency_ms", "topology", "propensity")


@dataclass(frozen=True)
class Validation:
    """A topology with its loaded models, or what is wrong with it."""

    topology: Topology | None
    """None when the file itself could not be loaded."""
    models: dict[str, Model] = field(default_factory=dict)
    """Variant -> loaded model (reused by the agent, so models load once)."""
    problems: list[ConfigError] = field(default_factory=list)
    warnings: list[ConfigError] = field(default_factory=list)
    """Model-directory versions that cannot serve while another version of it can."""
    versions: dict[str, list[str]] = field(default_factory=dict)
    """Variant -> the versions found on disk."""


def validate(path: str | Path, *, every_version: bool = False) -> Validation:
    """Load the topology and check schemas and models against it; never raises for user
    errors. `every_version` loads every version of each model directory, not only the one
    that would serve."""
    try:
        topology = load_topology(path)
    except ConfigErrors as exc:
        return Validation(None, problems=exc.errors)
    shown = str(path)
    loaded = load_variant_models(topology, every_version=every_version)
    models = loaded.models
    index = {v.name: i for i, v in enumerate(topology.variants)}
    problems = [
        ConfigError(shown, f"variants[{i}].model", str(e)) for i, e in loaded.errors.items()
    ]
    warnings = [
        ConfigError(shown, f"variants[{index[name]}].model", f"version {version}: {why}")
        for name, refused in loaded.refused.items()
        for version, why in refused.items()
    ]
    if topology.input.format == "avro":
        problems += _check_input_schema(shown, topology)
    outputs = next(iter(models.values())).output_names if models else ()
    for key, sink, required in (
        ("output", topology.output, OUTPUT_FIELDS),
        ("lake", topology.lake, LAKE_FIELDS),
    ):
        if sink.format == "avro" and sink.schema_ is not None:
            problems += _check_sink_schema(shown, key, sink.schema_, (*required, *outputs))
    if topology.drift.profile is not None:
        problems_, warnings_ = _check_drift(shown, topology, models)
        problems += problems_
        warnings += warnings_
    return Validation(topology, models, problems, warnings, loaded.versions)


def _check_drift(
    shown: str, topology: Topology, models: dict[str, Model]
) -> tuple[list[ConfigError], list[ConfigError]]:
    """The drift profile: readable, and a reference for every feature (one line each)."""
    path = topology.drift.profile
    assert path is not None
    try:
        profile = load_profile(path)
    except ProfileError as exc:
        return [ConfigError(shown, "drift.profile", str(exc))], []
    problems, warnings = check_profile(profile, topology, models)
    return (
        [ConfigError(shown, "drift.profile", f"{path}: {p}") for p in problems],
        [ConfigError(shown, "drift.profile", f"{path}: {w}") for w in warnings],
    )


def _check_input_schema(shown: str, topology: Topology) -> list[ConfigError]:
    assert topology.input.schema_ is not None
    try:
        fields = record_fields(load_schema(topology.input.schema_))
    except ValueError as exc:
        return [ConfigError(shown, "input.schema", str(exc))]
    if not fields:
        return [ConfigError(shown, "input.schema", "must be an Avro record schema")]
    problems = []
    for i, name in enumerate(topology.features):
        if name not in fields:
            problems.append(
                ConfigError(
                    shown, f"features[{i}]", f"{name!r} is not a field of {topology.input.schema_}"
                )
            )
        elif not _numeric(fields[name]):
            problems.append(
                ConfigError(
                    shown, f"features[{i}]", f"{name!r} has Avro type {fields[name]}, not a number"
                )
            )
    return problems


def _check_sink_schema(
    shown: str, key: str, path: Path, required: tuple[str, ...]
) -> list[ConfigError]:
    try:
        fields = record_fields(load_schema(path))
    except ValueError as exc:
        return [ConfigError(shown, f"{key}.schema", str(exc))]
    missing = [f for f in required if f not in fields]
    if not fields or missing:
        return [
            ConfigError(
                shown, f"{key}.schema", f"{path.name} lacks field(s) {', '.join(missing) or 'all'}"
            )
        ]
    return []


def _numeric(avro_type: Any) -> bool:
    if isinstance(avro_type, str):
        return avro_type in NUMERIC_AVRO
    if isinstance(avro_type, list):  # a union of numbers (no null: a feature must be present)
        return all(_numeric(t) for t in avro_type)
    if isinstance(avro_type, dict):
        return _numeric(avro_type.get("type"))
    return False
