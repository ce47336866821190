"""Control records: parse them, check them against a topology, and resolve what to serve.

A control record (key = topology name, JSON) says which served variants get what share of
traffic (`weights`, summing to 1), which variants are switched off (`disabled`), and which
model-directory version a variant serves (`versions`). `resolve` turns the record in force
(or the topology file's defaults when there is none) into a `Plan`; a record it rejects
leaves the previous one in force.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    ValidationError,
    field_validator,
)

from streamer.config import Topology

WEIGHT_TOLERANCE = 1e-6
"""How far a record's weights may sum from 1."""

Source = Literal["cli", "controller"]


class ControlRejected(ValueError):
    """A control record that cannot be applied; the message is one line."""


class ControlRecord(BaseModel):
    """The value of a control record. Unknown keys are ignored so the record can grow."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    weights: dict[str, StrictFloat]
    """Served variant -> share of traffic; the shares sum to 1 (JSON true/false are not
    numbers here)."""
    policy: str | None = None
    """Who chose the weights: `manual` for a person, the bandit policy for the controller."""
    ts: Any = None
    """Epoch ms when it was written; informational (agents never reject a record for it)."""
    reason: str | None = None
    disabled: list[str] = Field(default_factory=list)
    """Variants switched off: a served one's weight goes to the rest, a shadow stops scoring."""
    versions: dict[str, str] = Field(default_factory=dict)
    """Variant -> pinned model-directory version."""
    source: Source | None = None
    """`cli` or `controller`; a record without it counts as a person's."""
    stats: dict[str, Any] | None = None
    """The controller's evidence per variant."""

    @field_validator("versions", mode="before")
    @classmethod
    def _versions_as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v
                for k, v in value.items()
            }
        return value

    @property
    def by_person(self) -> bool:
        return self.source != "controller"

    def to_json(self) -> bytes:
        """The record's value as written to the control topic."""
        return orjson.dumps(self.model_dump(exclude_none=True))


def parse(value: bytes | None) -> ControlRecord:
    """A control record from its JSON value; ControlRejected naming what is wrong."""
    if not value:
        raise ControlRejected("empty value")
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise ControlRejected("not JSON") from None
    if not isinstance(raw, dict):
        raise ControlRejected(f"not a JSON object but {type(raw).__name__}")
    try:
        return ControlRecord.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ControlRejected(f"{where}: {first['msg']}{more}") from None


@dataclass(frozen=True)
class Plan:
    """What the agents serve under one control record."""

    weights: dict[str, float]
    """Every enabled served variant -> normalised share (zeros allowed; they sum to 1)."""
    shadows: dict[str, float]
    """Every enabled shadow -> its sample rate."""
    pins: dict[str, str]
    """Variant -> pinned model-directory version (the record's, else the topology's)."""


def default_record(topology: Topology) -> ControlRecord:
    """What the topology file says, as a record: its weights, nothing disabled or pinned."""
    weights = topology.served_weights()
    total = sum(weights.values())
    return ControlRecord(weights={k: w / total for k, w in weights.items()}, policy="file")


def resolve(
    topology: Topology,
    record: ControlRecord | None,
    directories: Mapping[str, Collection[str]],
) -> Plan:
    """The plan under `record` (None: the topology's defaults); ControlRejected if it names
    an unknown variant, gives a shadow a weight, has weights that are negative or do not sum
    to 1, pins a variant that is not a model directory (`directories`: variant -> versions
    on disk) or a version that is not there, or leaves no served variant with traffic."""
    record = record or default_record(topology)
    variants = {v.name: v for v in topology.variants}
    served = [v.name for v in topology.served]
    for name in [*record.weights, *record.disabled, *record.versions]:
        if name not in variants:
            raise ControlRejected(f"unknown variant {name!r} (has {', '.join(variants)})")
    for name, weight in record.weights.items():
        if variants[name].shadow:
            raise ControlRejected(f"{name} is a shadow and takes no weight")
        if not math.isfinite(weight) or weight < 0:
            raise ControlRejected(f"weight of {name} is {weight}; weights are finite and >= 0")
    total = sum(record.weights.values())
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise ControlRejected(f"weights sum to {total:.9g}, not 1")
    pins = {v.name: v.version for v in topology.variants if v.version and v.name in directories}
    for name, version in record.versions.items():
        if name not in directories:
            raise ControlRejected(f"{name} serves a model file; only model directories pin")
        if version not in directories[name]:
            have = ", ".join(directories[name]) or "none"
            raise ControlRejected(f"{name} has no version {version} (has {have})")
        pins[name] = version
    off = set(record.disabled)
    enabled = {n: record.weights.get(n, 0.0) for n in served if n not in off}
    share = sum(enabled.values())
    if share <= 0:
        raise ControlRejected("no enabled served variant has a weight above 0")
    return Plan(
        weights={n: w / share for n, w in enabled.items()},
        shadows={v.name: v.sample_rate for v in topology.shadows if v.name not in off},
        pins=pins,
    )


def obeys(topology: Topology, record: ControlRecord) -> bool:
    """Whether agents of `topology` take `record` at all: under `routing.strategy: static`
    they ignore the controller's records and obey only a person's."""
    return record.by_person or topology.routing.strategy == "bandit"
