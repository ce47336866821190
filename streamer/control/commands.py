"""`streamer control TOPOLOGY ...`: read the control topic and the agents' reports, and write
new control records that are checked against the topology before they are sent."""

from __future__ import annotations

import getpass
import math
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamer.config import Topology
from streamer.control.live import STATUS_INTERVAL_S
from streamer.control.record import (
    ControlRecord,
    ControlRejected,
    Plan,
    default_record,
    obeys,
    parse,
    resolve,
)
from streamer.control.topic import Entry, publish, read_all
from streamer.errors import StreamerError
from streamer.repository import is_directory, scan

STALE_AFTER_S = 3 * STATUS_INTERVAL_S
"""An agent that has not reported for this long is shown as not reporting."""


@dataclass(frozen=True)
class Judged:
    """A control record as the agents of the topology judge it."""

    entry: Entry
    record: ControlRecord | None
    """None for a tombstone (back to the topology file's weights) or an unreadable record."""
    plan: Plan | None
    """None when agents reject or ignore the record."""
    problem: str | None = None
    """Why agents reject or ignore it."""


@dataclass(frozen=True)
class AgentReport:
    """What one agent last reported serving."""

    agent: str
    age_s: float
    status: dict[str, Any]

    @property
    def live(self) -> bool:
        return self.age_s < STALE_AFTER_S


@dataclass(frozen=True)
class ControlState:
    """The control topic and the agents' reports, read now."""

    history: list[Judged]
    """This topology's records, oldest first."""
    agents: list[AgentReport]
    directories: dict[str, list[str]]
    """Model-directory variant -> versions (on this machine, else as agents report them)."""
    in_force: Judged | None = field(default=None)
    """The newest record the agents obey (None: the topology file's weights)."""

    @property
    def current(self) -> Judged | None:
        """The newest record on the topic for this topology."""
        return self.history[-1] if self.history else None


def _control_topic(topology: Topology) -> str:
    topic = topology.routing.control_topic
    if topic is None:
        raise StreamerError(
            f"{topology.source}: routing.control_topic: not set; live control needs one"
        )
    return topic


def read_state(topology: Topology) -> ControlState:
    """Read the control and status topics and judge every record against the topology."""
    topic = _control_topic(topology)
    status_topic = topology.routing.agent_status_topic
    assert status_topic is not None
    now_ms = time.time() * 1000
    latest: dict[str, Entry] = {}
    for entry in read_all(topology.kafka, status_topic):
        latest[entry.key] = entry
    agents = []
    for key, entry in sorted(latest.items()):
        if entry.value is None:
            continue  # the agent stopped
        try:
            status = orjson.loads(entry.value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(status, dict) and status.get("topology") == topology.name:
            age = (now_ms - float(status.get("ts", entry.timestamp_ms))) / 1000.0
            agents.append(AgentReport(key, age, status))
    directories = _directories(topology, agents)
    history = [
        _judge(topology, entry, directories)
        for entry in read_all(topology.kafka, topic)
        if entry.key == topology.name
    ]
    in_force = next((j for j in reversed(history) if j.plan is not None), None)
    return ControlState(history, agents, directories, in_force)


def _directories(topology: Topology, agents: list[AgentReport]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for spec in topology.variants:
        if is_directory(spec):
            found[spec.name] = list(scan(spec))
            continue
        reported: set[str] = set()
        for a in agents:
            versions = a.status.get("variants", {}).get(spec.name, {}).get("versions")
            if a.live and isinstance(versions, list):
                reported.update(str(v) for v in versions)
        if reported:
            found[spec.name] = sorted(reported, key=lambda v: (len(v), v))
    return found


def _judge(topology: Topology, entry: Entry, directories: Mapping[str, list[str]]) -> Judged:
    try:
        record = parse(entry.value) if entry.value is not None else None
        if record is not None and not obeys(topology, record):
            return Judged(entry, record, None, "ignored: routing.strategy is static")
        return Judged(entry, record, resolve(topology, record, directories))
    except ControlRejected as exc:
        return Judged(entry, None, None, f"rejected: {exc}")


# -- writing ------------------------------------------------------------------------------
Change = Callable[[ControlRecord, ControlState], ControlRecord]
"""Given the record in force (or the topology's defaults) and the state: the new record."""


WRITE_ATTEMPTS = 3
"""How often a write is rebuilt when another one slipped in between its read and its write."""


def apply(topology: Topology, what: str, change: Change) -> tuple[int, str]:
    """Build the new record from the one in force, check it against the topology, write it;
    returns its offset and what changed. StreamerError (one line) for a bad request.

    Two people writing at once must not lose a change: when another record was written
    between this one's read and its write, the change is applied again on top of that
    record and written again (a rollback is taken as written: it names a record)."""
    topic = _control_topic(topology)
    state = read_state(topology)
    base = _in_force_record(topology, state)
    for attempt in range(WRITE_ATTEMPTS):
        try:
            stamped = _stamped(topology, what, change, base, state)
        except StreamerError:
            if not attempt:
                raise
            # The other write already did it (enabled what we enable, say): put its
            # record back in force, since ours overwrote it.
            offset = publish(topology.kafka, topic, topology.name, base.to_json())
            return offset, "nothing changed (a concurrent write did the same)"
        diff = describe_change(base, stamped)
        read_up_to = state.current.entry.offset if state.current else -1
        offset = publish(topology.kafka, topic, topology.name, stamped.to_json())
        if what == "rollback":
            break
        state = read_state(topology)
        between = [j for j in state.history if read_up_to < j.entry.offset < offset]
        if not between:
            break
        # Someone else's record went in first: ours overwrote it. Redo ours on top of it.
        newest = next((j for j in reversed(between) if j.record is not None), None)
        base = newest.record if newest is not None and newest.record else base
    return offset, diff


def _stamped(
    topology: Topology, what: str, change: Change, base: ControlRecord, state: ControlState
) -> ControlRecord:
    """The changed record, stamped as a person's and checked against the topology."""
    try:
        new = change(base, state)
    except ControlRejected as exc:
        raise StreamerError(f"{topology.source}: {what}: {exc}") from None
    stamped = new.model_copy(
        update={
            "ts": int(time.time() * 1000),
            "source": "cli",
            "policy": new.policy if what == "rollback" else "manual",
            "reason": f"{what} by {getpass.getuser()}@{socket.gethostname()}",
        }
    )
    try:
        resolve(topology, stamped, state.directories)
    except ControlRejected as exc:
        raise StreamerError(f"{topology.source}: {what}: {exc}") from None
    return stamped


def _in_force_record(topology: Topology, state: ControlState) -> ControlRecord:
    if state.in_force is not None and state.in_force.record is not None:
        return state.in_force.record
    return default_record(topology)


def _served(topology: Topology, name: str) -> None:
    names = [v.name for v in topology.served]
    if name not in names:
        kind = "a shadow" if name in {v.name for v in topology.shadows} else "not a variant"
        raise ControlRejected(f"{name} is {kind}; served variants: {', '.join(names)}")


def _known(topology: Topology, name: str) -> None:
    names = [v.name for v in topology.variants]
    if name not in names:
        raise ControlRejected(f"unknown variant {name!r} (has {', '.join(names)})")


def set_weights(topology: Topology, weights: Mapping[str, float]) -> Change:
    """Served variants named get these shares (normalised); the others get 0."""

    def change(base: ControlRecord, _state: ControlState) -> ControlRecord:
        for name, w in weights.items():
            _served(topology, name)
            if not (math.isfinite(w) and w >= 0):
                raise ControlRejected(f"weight of {name} is {w}; weights are finite and >= 0")
        total = sum(weights.values())
        if total <= 0:
            raise ControlRejected("weights must have a positive sum")
        new = {v.name: weights.get(v.name, 0.0) / total for v in topology.served}
        return base.model_copy(update={"weights": new})

    return change


def promote(topology: Topology, name: str) -> Change:
    """Blue/green: every served event goes to `name` (enabled if it was disabled)."""

    def change(base: ControlRecord, _state: ControlState) -> ControlRecord:
        _served(topology, name)
        weights = {v.name: 1.0 if v.name == name else 0.0 for v in topology.served}
        disabled = [d for d in base.disabled if d != name]
        return base.model_copy(update={"weights": weights, "disabled": disabled})

    return change


def disable(topology: Topology, name: str, off: bool) -> Change:
    """Switch a variant off (`off`) or on again."""

    def change(base: ControlRecord, _state: ControlState) -> ControlRecord:
        _known(topology, name)
        if off == (name in base.disabled):
            raise ControlRejected(f"{name} is already {'disabled' if off else 'enabled'}")
        disabled = [*base.disabled, name] if off else [d for d in base.disabled if d != name]
        return base.model_copy(update={"disabled": disabled})

    return change


def pin(topology: Topology, name: str, version: str | None) -> Change:
    """Serve `version` of a model-directory variant (None: unpin, serve the highest)."""

    def change(base: ControlRecord, state: ControlState) -> ControlRecord:
        _known(topology, name)
        versions = dict(base.versions)
        if version is None:
            if versions.pop(name, None) is None:
                raise ControlRejected(f"{name} is not pinned")
        else:
            if name not in state.directories:
                raise ControlRejected(f"{name} serves a model file; only model directories pin")
            versions[name] = version
        return base.model_copy(update={"versions": versions})

    return change


def rollback(topology: Topology) -> Change:
    """Re-publish the record before the current one (before the first: the topology file's
    weights, nothing disabled or pinned)."""

    def change(_base: ControlRecord, state: ControlState) -> ControlRecord:
        if not state.history:
            raise ControlRejected("there is no record to roll back")
        if len(state.history) == 1:
            return default_record(topology)
        previous = state.history[-2]
        if previous.record is None:
            why = previous.problem or "it is a deletion"
            raise ControlRejected(f"the record at offset {previous.entry.offset}: {why}")
        return previous.record

    return change


def describe_change(old: ControlRecord, new: ControlRecord) -> str:
    """What differs between two records, for people."""
    parts = []
    moved = [
        f"{n} {_num(old.weights.get(n, 0.0))} -> {_num(new.weights.get(n, 0.0))}"
        for n in dict.fromkeys([*old.weights, *new.weights])
        if abs(old.weights.get(n, 0.0) - new.weights.get(n, 0.0)) > 1e-12
    ]
    if moved:
        parts.append("weights " + ", ".join(moved))
    for name in [d for d in new.disabled if d not in old.disabled]:
        parts.append(f"disabled {name}")
    for name in [d for d in old.disabled if d not in new.disabled]:
        parts.append(f"enabled {name}")
    for name, version in new.versions.items():
        if old.versions.get(name) != version:
            parts.append(f"pinned {name} to version {version}")
    for name in [n for n in old.versions if n not in new.versions]:
        parts.append(f"unpinned {name}")
    return "; ".join(parts) or "nothing changed"


def _num(value: float) -> str:
    return f"{value:.4g}"


# -- reading ------------------------------------------------------------------------------
def format_record(judged: Judged) -> str:
    """One line: weights, disabled, pins, source and reason of a record."""
    r = judged.record
    if r is None:
        return "deleted: back to the topology file's weights" if judged.problem is None else ""
    text = "weights " + ", ".join(f"{n} {_num(w)}" for n, w in r.weights.items())
    if r.disabled:
        text += f"; disabled {', '.join(r.disabled)}"
    if r.versions:
        text += "; pinned " + ", ".join(f"{n}={v}" for n, v in r.versions.items())
    text += f"; source {r.source or 'person'}"
    if r.policy:
        text += f", policy {r.policy}"
    if r.reason:
        text += f" ({r.reason})"
    return text


def _when(ms: float) -> str:
    age = max(time.time() - ms / 1000.0, 0.0)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000.0))
    return f"{stamp} ({_age(age)} ago)"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def show(topology: Topology) -> list[str]:
    """The record in force, the newest one if agents reject it, and each agent's report."""
    state = read_state(topology)
    lines = [f"topology {topology.name} (routing.strategy {topology.routing.strategy})"]
    judged = state.in_force
    if judged is None:
        weights = ", ".join(f"{n} {_num(w)}" for n, w in default_record(topology).weights.items())
        lines.append(f"in force: the topology file (no control record): weights {weights}")
    else:
        e = judged.entry
        lines.append(f"in force: offset {e.offset}, written {_when(e.timestamp_ms)}")
        lines.append(f"  {format_record(judged) or 'deleted'}")
        if judged.plan is not None:
            served = ", ".join(f"{n} {_num(w)}" for n, w in judged.plan.weights.items())
            lines.append(f"  serving weights {served}")
    current = state.current
    if current is not None and current is not judged:
        lines.append(f"newest: offset {current.entry.offset}: {current.problem}")
    live = [a for a in state.agents if a.live]
    lines.append(f"agents: {len(live)} reporting")
    for a in live:
        lines.extend(_agent_lines(a))
    gone = [a for a in state.agents if not a.live]
    if gone:
        # Killed agents leave no tombstone; their last report stays until compaction.
        last = min(a.age_s for a in gone)
        lines.append(
            f"  and {len(gone)} not reporting (stopped or dead; the latest {_age(last)} ago)"
        )
    return lines


def _agent_lines(report: AgentReport) -> list[str]:
    s = report.status
    control = s.get("control") or {}
    applied = f"control offset {control['offset']}" if control else "no control record"
    partitions = ", ".join(map(str, s.get("partitions", []))) or "none"
    lines = [
        f"  {report.agent}: reported {_age(report.age_s)} ago, partitions {partitions}, {applied}"
    ]
    rejected = s.get("control_rejected")
    if rejected:
        lines.append(f"    rejected control offset {rejected['offset']}: {rejected['reason']}")
    for name, v in s.get("variants", {}).items():
        role = (
            f"shadow, sample {v.get('sample_rate')}"
            if v.get("shadow")
            else (f"weight {_num(v.get('weight', 0.0))}")
        )
        text = f"    {name}: version {v.get('version')} ({str(v.get('sha256'))[:12]}), {role}"
        if not v.get("enabled", True):
            text += ", disabled"
        if "versions" in v:
            text += f"; versions {', '.join(v['versions']) or 'none'}"
            if v.get("pinned"):
                text += f", pinned {v['pinned']}"
        lines.append(text)
        for version, why in (v.get("rejected") or {}).items():
            lines.append(f"      version {version} rejected: {why}")
    return lines


def history(topology: Topology, limit: int) -> list[str]:
    """The topology's records on the control topic, newest first."""
    state = read_state(topology)
    lines = []
    for judged in list(reversed(state.history))[:limit]:
        e = judged.entry
        mark = " (in force)" if judged is state.in_force else ""
        body = format_record(judged)
        problem = f" [{judged.problem}]" if judged.problem else ""
        lines.append(f"offset {e.offset}  {_when(e.timestamp_ms)}{mark}{problem}  {body}".rstrip())
    return lines or [f"no control records for {topology.name}"]
