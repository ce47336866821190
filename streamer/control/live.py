"""The agent's side of live control: follow the control topic, watch model directories,
swap in what they say between two batches, and report what this agent serves.

One background thread per agent does all of it, so the batch loop never waits for Kafka or
for a model to load: it picks up the staged `VariantSet` at its next batch boundary.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Producer

from streamer.config import Topology
from streamer.control.record import (
    ControlRecord,
    ControlRejected,
    Plan,
    obeys,
    parse,
    resolve,
)
from streamer.control.topic import Entry, TopicReader
from streamer.kafka.clients import make_producer
from streamer.metrics import Metrics
from streamer.models import Model, ModelError, check_compatible, load_model, probe
from streamer.repository import ModelFile, Signature, is_directory, scan, settled, version_key
from streamer.variants import Variants

log = logging.getLogger("streamer.control")

STATUS_INTERVAL_S = 30.0
"""How often an agent re-publishes its status when nothing changed."""
FOLLOW_POLL_S = 0.2
"""Longest wait for a control record per turn of the control thread."""
PROBE_ROWS = 64
"""Recent real rows kept to probe a new model version before it serves."""


class RecentRows:
    """The latest batch's feature rows (written by the batch loop, read by the watcher)."""

    def __init__(self, n_features: int) -> None:
        self._rows = np.zeros((0, n_features), dtype=np.float32)
        self._lock = threading.Lock()

    def keep(self, features: np.ndarray) -> None:
        if len(features):
            with self._lock:
                self._rows = features[:PROBE_ROWS]

    def get(self) -> np.ndarray:
        with self._lock:
            return self._rows


def agent_id() -> str:
    """A key for this process's status reports: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class LiveControl:
    """Applies control records and new model versions to `variants` while the agent serves.

    - Control records (key = topology name) are read from the beginning at `start` (the
      newest one that applies is in force before the first batch) and followed afterwards.
      An invalid record is rejected (logged, counted) and the last good one stays in force.
      Under `routing.strategy: static` the controller's records are ignored.
    - Model directories are scanned every `models.poll_interval_s`: the highest version
      (unless pinned) is loaded, checked against the variant's current model, probed with
      recent real rows, then staged; one that fails is refused and the old one serves on.
    - What the agent serves is reported to the status topic on change and every
      `STATUS_INTERVAL_S`; a tombstone on stop.
    """

    def __init__(
        self,
        topology: Topology,
        variants: Variants,
        models: Mapping[str, Model],
        metrics: Metrics,
        recent: RecentRows,
        *,
        assigned: Callable[[], list[tuple[str, int]]] = list,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`assigned` tells which input partitions the agent owns (for its status report)."""
        self.topology = topology
        self.assigned = assigned
        self.variants = variants
        self.metrics = metrics
        self.recent = recent
        self.clock = clock
        self.agent = agent_id()
        self._specs = {v.name: v for v in topology.variants}
        self._serving: dict[str, Model] = dict(models)
        self._files: dict[str, dict[str, ModelFile]] = {
            v.name: scan(v) for v in topology.variants if is_directory(v)
        }
        self._seen: dict[str, dict[str, ModelFile]] = dict(self._files)
        """Variant -> every version file seen at the last scan, settled or not."""
        self._serving_sig: dict[str, Signature | None] = {
            name: _signature(files, self._serving[name]) for name, files in self._files.items()
        }
        self._refused: dict[str, dict[str, tuple[Signature, str]]] = {}
        self._record: ControlRecord | None = None
        self._in_force: Entry | None = None
        self._plan = resolve(topology, None, self._directories())
        self._last_rejected: dict[str, Any] | None = None
        self._reader: TopicReader | None = None
        self._producer: Producer | None = None
        self._reported: bytes = b""
        self._reported_at = -STATUS_INTERVAL_S
        self._scanned_at = clock()
        self._started_ms = int(time.time() * 1000)
        self.metrics_address: str | None = None
        """HOST:PORT of the agent's /metrics, in its status reports (`streamer top`)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def needed(self) -> bool:
        """Whether there is anything to follow: a control topic or a model directory."""
        return self.topology.routing.control_topic is not None or bool(self._files)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, timeout_s: float) -> None:
        """Apply the control record in force (read from the beginning), then follow."""
        t = self.topology
        if t.routing.control_topic is not None:
            self._reader = TopicReader(t.kafka, t.routing.control_topic)
            self._reader.start(timeout_s)
            mine = [e for e in self._reader.read_to_end(timeout_s) if e.key == t.name]
            self._catch_up(mine)
            self._producer = make_producer(t.kafka, {"linger.ms": 0})
            self._report(force=True)
        self._thread = threading.Thread(target=self._follow, name="live-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following; remove this agent's status report."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
        if self._reader is not None:
            self._reader.close()
        status_topic = self.topology.routing.agent_status_topic
        if self._producer is not None and status_topic is not None:
            self._producer.produce(status_topic, None, self.agent.encode())
            self._producer.flush(2.0)

    def _follow(self) -> None:
        interval = self.topology.models.poll_interval_s
        while not self._stop.is_set():
            try:
                if self._reader is not None:
                    for entry in self._reader.poll(FOLLOW_POLL_S):
                        if entry.key == self.topology.name:
                            self._receive(entry)
                else:
                    self._stop.wait(FOLLOW_POLL_S)
                if self.clock() - self._scanned_at >= interval:
                    self._scanned_at = self.clock()
                    self._rescan()
                self._report()
            except Exception:  # a bug here must not stop serving; it is logged loudly
                log.exception("live control failed a turn; it goes on")
                self._stop.wait(1.0)

    # -- control records -------------------------------------------------------------------
    def _catch_up(self, entries: list[Entry]) -> None:
        """The newest record that applies is in force; newer ones that do not are rejected."""
        for entry in reversed(entries):
            if self._receive(entry):
                return
        self._converge(self._plan)  # none applies: the topology file's defaults

    def _receive(self, entry: Entry) -> bool:
        """Apply one control record if it is valid; True if it is now in force."""
        try:
            record = parse(entry.value) if entry.value is not None else None
            if record is not None and not obeys(self.topology, record):
                self.metrics.control_records.labels("ignored").inc()
                log.info(
                    "control record at offset %d ignored: routing.strategy is static "
                    "and it comes from the controller",
                    entry.offset,
                )
                return False
            if record is not None:
                self._look_for_pins(record)
            plan = resolve(self.topology, record, self._directories())
            self._converge(plan, pinned_strictly=True)
        except ControlRejected as exc:
            self.metrics.control_records.labels("rejected").inc()
            self._last_rejected = {"offset": entry.offset, "reason": str(exc)}
            kept = f"offset {self._in_force.offset}" if self._in_force else "the topology file"
            log.warning(
                "control record at offset %d rejected: %s; %s stays in force",
                entry.offset,
                exc,
                kept,
            )
            return False
        self.metrics.control_records.labels("applied").inc()
        self._record, self._in_force, self._plan = record, entry, plan
        log.info("control record at offset %d applied: %s", entry.offset, _describe(plan, record))
        return True

    # -- model versions --------------------------------------------------------------------
    def _directories(self) -> dict[str, list[str]]:
        return {name: list(files) for name, files in self._files.items()}

    def _look_for_pins(self, record: ControlRecord) -> None:
        """A pinned version this agent has not seen yet (written since its last scan, or
        not settled yet) is looked for now: the person asked for it by name."""
        for name, version in record.versions.items():
            files = self._files.get(name)
            if files is not None and version not in files:
                found = scan(self._specs[name]).get(version)
                if found is not None:
                    ordered = sorted(
                        {**files, version: found}.items(), key=lambda kv: version_key(kv[0])
                    )
                    self._files[name] = dict(ordered)

    def _rescan(self) -> None:
        """Look for new (or removed) versions and serve what the plan says."""
        now = time.time()
        for name, previous in self._files.items():
            raw = scan(self._specs[name])
            found = settled(raw, self._seen.get(name, {}), now)
            self._seen[name] = raw
            # A known version whose file is being rewritten stays as it was until it
            # settles (it must not look removed, or an older version would step in).
            for version in raw.keys() - found.keys():
                if version in previous:
                    found[version] = previous[version]
            self._files[name] = dict(sorted(found.items(), key=lambda kv: version_key(kv[0])))
        self._converge(self._plan)

    def _converge(self, plan: Plan, *, pinned_strictly: bool = False) -> None:
        """Load the model each directory variant should serve under `plan`, then stage the
        plan. With `pinned_strictly`, a pinned version that cannot serve rejects the plan
        (ControlRejected) instead of leaving the current model serving."""
        swaps: dict[str, tuple[Model, Signature]] = {}
        for name in self._files:
            pin = plan.pins.get(name)
            try:
                chosen = self._choose(name, pin)
            except ModelError as exc:
                if pin is not None and pinned_strictly:
                    raise ControlRejected(f"{name} version {pin} cannot serve: {exc}") from None
                chosen = None
            if chosen is not None:
                swaps[name] = chosen
        if not swaps and plan == self._plan:
            return  # nothing to change: the batch loop keeps its set
        for name, (model, signature) in swaps.items():
            old = self._serving[name]
            self._serving[name] = model
            self._serving_sig[name] = signature
            self.metrics.model_reloads.labels(name, "applied").inc()
            log.info(
                "variant %s: version %s replaces %s from the next batch",
                name,
                model.version,
                old.version,
            )
        self.variants.stage(plan.weights, plan.shadows, {name: m for name, (m, _) in swaps.items()})

    def _choose(self, name: str, pin: str | None) -> tuple[Model, Signature] | None:
        """A new model for `name` (pinned version, else the highest that serves), or None
        to keep the current one. ModelError if a pinned version cannot serve."""
        files = self._files[name]
        if pin is not None:
            candidates = [files[pin]] if pin in files else []
        else:
            candidates = sorted(files.values(), key=lambda f: version_key(f.version), reverse=True)
        current = self._serving[name]
        for file in candidates:
            same_version = file.version == current.version
            if same_version and file.signature == self._serving_sig[name]:
                return None
            refused = self._refused.get(name, {}).get(file.version)
            try:
                if refused is not None and refused[0] == file.signature:
                    raise ModelError(refused[1])  # refused before, and unchanged since
                try:
                    return self._load(name, file), file.signature
                except ModelError as exc:
                    self._refuse(name, file, str(exc))
                    raise
            except ModelError:
                if pin is not None:
                    raise
                if same_version:  # rewritten in place and broken: the copy in memory serves
                    return None
        return None

    def _load(self, name: str, file: ModelFile) -> Model:
        """Load a version and check it can stand in for the variant's current model."""
        t = self.topology
        model = load_model(file.path, len(t.features), t.outputs, file.version)
        model = check_compatible(name, self._serving[name], model)
        probe(model, self.recent.get())
        return model

    def _refuse(self, name: str, file: ModelFile, why: str) -> None:
        self._refused.setdefault(name, {})[file.version] = (file.signature, why)
        self.metrics.model_reloads.labels(name, "rejected").inc()
        log.warning(
            "variant %s: version %s rejected, version %s serves on: %s",
            name,
            file.version,
            self._serving[name].version,
            why,
        )

    # -- status ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What this agent serves, as reported on the status topic."""
        plan = self._plan
        variants: dict[str, Any] = {}
        for spec in self.topology.variants:
            model = self._serving[spec.name]
            entry: dict[str, Any] = {
                "version": model.version,
                "sha256": model.sha256,
                "shadow": spec.shadow,
                "enabled": spec.name in plan.weights or spec.name in plan.shadows,
            }
            if spec.shadow:
                entry["sample_rate"] = spec.sample_rate
            else:
                entry["weight"] = plan.weights.get(spec.name, 0.0)
            if spec.name in self._files:
                entry["versions"] = list(self._files[spec.name])
                entry["pinned"] = plan.pins.get(spec.name)
                refused = self._refused.get(spec.name, {})
                on_disk = self._files[spec.name]
                entry["rejected"] = {
                    v: why
                    for v, (sig, why) in refused.items()
                    # still the refused file on disk, and not the one serving
                    if v in on_disk
                    and on_disk[v].signature == sig
                    and self._serving_sig[spec.name] != sig
                }
            variants[spec.name] = entry
        applied = None
        if self._in_force is not None:
            r = self._record
            applied = {
                "offset": self._in_force.offset,
                "source": "deleted" if r is None else (r.source or "cli"),
                "ts": self._in_force.timestamp_ms,
            }
        return {
            "agent": self.agent,
            "topology": self.topology.name,
            "host": socket.gethostname(),
            "metrics": self.metrics_address,
            "pid": os.getpid(),
            "started": self._started_ms,
            "strategy": self.topology.routing.strategy,
            "partitions": sorted(p for _, p in self.assigned()),
            "control": applied,
            "control_rejected": self._last_rejected,
            "variants": variants,
        }

    def advertise_metrics(self, host: str, port: int) -> None:
        """Report where /metrics answers; a wildcard bind address as this host's name."""
        wildcard = host in ("", "0.0.0.0", "::")  # noqa: S104 - compared, not bound
        name = socket.gethostname() if wildcard else f"[{host}]" if ":" in host else host
        self.metrics_address = f"{name}:{port}"

    def _report(self, *, force: bool = False) -> None:
        topic = self.topology.routing.agent_status_topic
        if self._producer is None or topic is None:
            return
        self._producer.poll(0)
        body = orjson.dumps(self.status(), option=orjson.OPT_SORT_KEYS)
        now = self.clock()
        if not force and body == self._reported and now - self._reported_at < STATUS_INTERVAL_S:
            return
        self._reported, self._reported_at = body, now
        report = {**orjson.loads(body), "ts": int(time.time() * 1000)}
        try:
            self._producer.produce(topic, orjson.dumps(report), self.agent.encode())
        except BufferError:  # the cluster is away; the next report says the same
            log.debug("status report not queued: producer queue full")


def _signature(files: Mapping[str, ModelFile], model: Model) -> Signature | None:
    found = files.get(model.version)
    return found.signature if found is not None and found.path == model.path else None


def _describe(plan: Plan, record: ControlRecord | None) -> str:
    weights = " ".join(f"{n}={w:.4g}" for n, w in plan.weights.items())
    text = f"weights {weights}"
    if record is not None and record.disabled:
        text += f"; disabled {', '.join(record.disabled)}"
    if plan.pins:
        text += "; pinned " + ", ".join(f"{n}={v}" for n, v in plan.pins.items())
    source = "the topology file (record deleted)" if record is None else record.source or "cli"
    return f"{text} (from {source})"
