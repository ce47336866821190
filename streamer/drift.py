"""Drift: how far live inputs and predictions have moved from a reference profile.

A **profile** (`streamer profile`, a JSON file) describes a reference sample of real
events: for every feature, and for every served variant's main output (the variant's model
scoring those events), fixed bins and the share of the sample in each, its mean and its
standard deviation.

- **Bins** are the sample's quantiles: `bins - 1` interior edges at the 1/bins, 2/bins, ...
  quantiles (deciles by default), with -inf and +inf at the ends, so each bin holds about
  the same share of the reference. Tied quantiles are merged (a feature with few distinct
  values gets fewer bins). Bin i holds the values v with edge[i-1] <= v < edge[i].
- **PSI** (population stability index) = sum over bins of (live - ref) * ln(live / ref),
  where live and ref are the shares of events in the bin; a share below EPSILON counts as
  EPSILON, so an empty bin costs a finite amount. Rules of thumb: < 0.1 stable, 0.1-0.25
  moderate, > 0.25 a major shift.
- **Mean shift** = (live mean - ref mean) / ref standard deviation.
- **Main output** of a variant: the first published output with a floating-point type (the
  first published output when none has one). Per row, a single value is used as it is; a
  pair (two-class probabilities) by its second column, the positive-class score; three
  or more values by their largest (the top class's score).

The agent (`Drift`) keeps, per served variant, bin counts of the rows that variant scored
over a sliding window of about `drift.window` events, updated per batch with one
`np.searchsorted` per feature and one `np.bincount` (never per event). It sets the
`streamer_*_drift_*` gauges from those counts at most every REFRESH_INTERVAL_S while batches
flow, and once more when the agent goes idle.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streamer.codecs import decode_batch, make_decoder
from streamer.config import Topology
from streamer.control.topic import TopicReader
from streamer.errors import StreamerError
from streamer.inference import VariantScores
from streamer.metrics import Metrics
from streamer.models import Model, first_line, output_types

log = logging.getLogger("streamer.drift")

PROFILE_FORMAT = 1
"""Version of the profile file's layout."""
EPSILON = 1e-4
"""The smallest bin share PSI uses (an empty bin counts as this share)."""
WINDOW_STEPS = 32
"""The sliding window moves in steps of about window / WINDOW_STEPS events (or whole
batches, when batches are larger): its oldest step leaves once the rest hold `window`."""
SCORE_CHUNK = 4096
"""Rows per model call while profiling."""
MIN_PROFILE_EVENTS = 100
"""Fewer decodable events than this make no profile (quantile bins would be noise)."""
READ_TIMEOUT_S = 60.0
REFRESH_INTERVAL_S = 0.25
"""While batches flow the drift gauges are recomputed at most this often (binning is per
batch); `Drift.flush` brings them up to date at once (the agent calls it when idle)."""


class ProfileError(StreamerError):
    """A profile file that cannot be read or does not fit the topology; one line."""


# -- the math ------------------------------------------------------------------------------


def quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """The interior bin edges of a reference sample: its 1/bins, ..., (bins-1)/bins quantiles,
    ties merged (float64, ascending, at most bins - 1 of them)."""
    if bins < 2:
        raise ValueError("bins must be at least 2")
    sample = np.asarray(values, dtype=np.float64)
    if sample.size == 0:
        raise ValueError("no values to bin")
    return np.unique(np.quantile(sample, np.arange(1, bins) / bins))


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each value: 0 below edges[0], i for edges[i-1] <= v < edges[i]."""
    return np.searchsorted(edges, values, side="right")


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The share of `values` in each of the len(edges) + 1 bins."""
    counts = np.bincount(bin_index(values, edges), minlength=len(edges) + 1)
    return counts / max(int(counts.sum()), 1)


def psi(live: np.ndarray, ref: np.ndarray) -> np.ndarray | float:
    """Population stability index of live bin shares against reference shares, along the
    last axis (a matrix gives one PSI per row); shares below EPSILON count as EPSILON."""
    p = np.maximum(np.asarray(live, dtype=np.float64), EPSILON)
    q = np.maximum(np.asarray(ref, dtype=np.float64), EPSILON)
    result = ((p - q) * np.log(p / q)).sum(axis=-1)
    return float(result) if np.ndim(result) == 0 else result


def mean_shift(
    live_mean: np.ndarray | float, ref_mean: np.ndarray | float, ref_std: np.ndarray | float
) -> np.ndarray:
    """(live mean - ref mean) / ref std, elementwise; a constant reference (std 0) gives 0
    for the same mean and +-inf for any other."""
    diff = np.asarray(live_mean, dtype=np.float64) - ref_mean
    std = np.asarray(ref_std, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = diff / std
    return np.where(std > 0, shift, np.where(diff == 0, 0.0, np.copysign(np.inf, diff)))


# -- the main output -------------------------------------------------------------------------


_FLOAT_TYPES = ("tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)")


def main_output(model: Model) -> str:
    """The output drift watches: the first published output of a floating-point type, else
    the first published output."""
    types = output_types(model)
    for name in model.output_names:
        if types[name][0] in _FLOAT_TYPES:
            return name
    return model.output_names[0]


def main_values(value: np.ndarray) -> np.ndarray:
    """One number per row of an output array (n, ...): a single value as it is, a pair by its
    second column (the positive class), more by their largest. float64."""
    n = value.shape[0]
    if n == 0:
        return np.empty(0)
    flat = np.asarray(value).reshape(n, -1).astype(np.float64, copy=False)
    if flat.shape[1] == 1:
        return flat[:, 0]
    if flat.shape[1] == 2:
        return flat[:, 1]
    top: np.ndarray = flat.max(axis=1)
    return top


def main_values_of_rows(values: Sequence[Any]) -> np.ndarray:
    """`main_values` of an output as `VariantScores.outputs` holds it (a number per row, or
    a list per row): the same numbers."""
    n = len(values)
    if n == 0:
        return np.empty(0)
    first = values[0]
    if not isinstance(first, list):
        return np.asarray(values, dtype=np.float64)
    if len(first) == 2:
        return np.fromiter((row[1] for row in values), dtype=np.float64, count=n)
    if len(first) == 1:
        return np.fromiter((row[0] for row in values), dtype=np.float64, count=n)
    top: np.ndarray = np.asarray(values, dtype=np.float64).max(axis=1)
    return top


# -- the profile ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """One reference distribution: its fixed bins, the share of the sample in each, its
    mean and standard deviation."""

    edges: np.ndarray
    """Interior bin edges, ascending (-inf and +inf are implied at the ends)."""
    shares: np.ndarray
    """Share of the reference sample per bin (len(edges) + 1 of them, summing to 1)."""
    mean: float
    std: float

    @classmethod
    def of(cls, values: np.ndarray, bins: int) -> Reference:
        sample = np.asarray(values, dtype=np.float64)
        edges = quantile_edges(sample, bins)
        return cls(edges, bin_shares(sample, edges), float(sample.mean()), float(sample.std()))

    def to_json(self) -> dict[str, Any]:
        return {
            "edges": self.edges.tolist(),
            "shares": self.shares.tolist(),
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_json(cls, raw: Any, where: str) -> Reference:
        if not isinstance(raw, dict):
            raise ProfileError(f"{where}: must be an object with edges, shares, mean, std")
        edges = _numbers(raw.get("edges"), f"{where}.edges")
        shares = _numbers(raw.get("shares"), f"{where}.shares")
        if np.any(np.diff(edges) <= 0):
            raise ProfileError(f"{where}.edges: must be strictly ascending")
        if len(shares) != len(edges) + 1:
            raise ProfileError(
                f"{where}.shares: {len(shares)} shares for {len(edges)} edges "
                f"(one more share than edges)"
            )
        if np.any(shares < 0) or not math.isclose(float(shares.sum()), 1.0, abs_tol=1e-6):
            raise ProfileError(f"{where}.shares: must be >= 0 and sum to 1")
        mean, std = _number(raw.get("mean")), _number(raw.get("std"))
        if mean is None:
            raise ProfileError(f"{where}.mean: must be a finite number")
        if std is None or std < 0:
            raise ProfileError(f"{where}.std: must be a finite number >= 0")
        return cls(edges, shares, mean, std)


@dataclass(frozen=True)
class PredictionReference(Reference):
    """A served variant's main output over the reference events."""

    output: str = ""
    """The ONNX output it describes (see `main_output`)."""
    version: str = ""
    """The model version that scored the reference events."""

    def to_json(self) -> dict[str, Any]:
        return {"output": self.output, "model_version": self.version, **super().to_json()}

    @classmethod
    def from_json(cls, raw: Any, where: str) -> PredictionReference:
        base = Reference.from_json(raw, where)
        output, version = raw.get("output"), raw.get("model_version", "")
        if not isinstance(output, str) or not output:
            raise ProfileError(f"{where}.output: must name the model output it describes")
        return cls(base.edges, base.shares, base.mean, base.std, output, str(version))


@dataclass(frozen=True)
class Profile:
    """A reference for drift: per feature and per served variant's main output."""

    features: dict[str, Reference]
    predictions: dict[str, PredictionReference]
    """Served variant -> its main output over the reference events."""
    events: int
    """How many events the references describe."""
    topology: str = ""
    source: str = ""
    """Where the events came from (a topic)."""
    created: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "topology": self.topology,
            "created": self.created,
            "source": self.source,
            "events": self.events,
            "features": {name: ref.to_json() for name, ref in self.features.items()},
            "predictions": {name: ref.to_json() for name, ref in self.predictions.items()},
        }

    @classmethod
    def from_json(cls, raw: Any) -> Profile:
        if not isinstance(raw, dict):
            raise ProfileError("must be a JSON object (written by `streamer profile`)")
        if raw.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"format {raw.get('format')!r} is not {PROFILE_FORMAT}")
        features, predictions = raw.get("features"), raw.get("predictions", {})
        if not isinstance(features, dict) or not features:
            raise ProfileError("features: must be an object of feature references")
        if not isinstance(predictions, dict):
            raise ProfileError("predictions: must be an object of variant references")
        events = raw.get("events")
        if not isinstance(events, int) or isinstance(events, bool) or events < 1:
            raise ProfileError("events: must be a positive integer")
        return cls(
            features={str(k): Reference.from_json(v, f"features.{k}") for k, v in features.items()},
            predictions={
                str(k): PredictionReference.from_json(v, f"predictions.{k}")
                for k, v in predictions.items()
            },
            events=events,
            topology=str(raw.get("topology", "")),
            source=str(raw.get("source", "")),
            created=str(raw.get("created", "")),
        )


def _numbers(raw: Any, where: str) -> np.ndarray:
    if not isinstance(raw, list) or not all(_finite(v) for v in raw):
        raise ProfileError(f"{where}: must be a list of finite numbers")
    return np.asarray(raw, dtype=np.float64)


def _number(value: Any) -> float | None:
    """A finite JSON number as a float; None for anything else."""
    return float(value) if _finite(value) else None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def load_profile(path: Path) -> Profile:
    """Read a profile file; ProfileError (one line, naming the file) if it cannot serve."""
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ProfileError(
            f"{path}: file not found (write one with `streamer profile TOPOLOGY -o {path}`)"
        ) from None
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ProfileError(f"{path}: not JSON: {exc}") from None
    try:
        return Profile.from_json(raw)
    except ProfileError as exc:
        raise ProfileError(f"{path}: {exc}") from None


def write_profile(profile: Profile, path: Path) -> None:
    """Write the profile as JSON, whole or not at all (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = orjson.dumps(profile.to_json(), option=orjson.OPT_INDENT_2)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data + b"\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_profile(
    profile: Profile, topology: Topology, models: Mapping[str, Model]
) -> tuple[list[str], list[str]]:
    """(problems, warnings) of using `profile` for `topology`: every feature needs a
    reference; a served variant without one gets no prediction drift (a warning)."""
    problems: list[str] = []
    warnings: list[str] = []
    missing = [f for f in topology.features if f not in profile.features]
    if missing:
        problems.append(
            f"has no reference for feature(s) {', '.join(missing)} "
            f"(it describes {', '.join(profile.features)}); run `streamer profile` again"
        )
    for v in topology.served:
        ref = profile.predictions.get(v.name)
        if ref is None:
            warnings.append(
                f"has no reference for variant {v.name}: "
                "streamer_prediction_drift_psi is not exported for it"
            )
            continue
        model = models.get(v.name)
        if model is None:
            continue
        if ref.output not in model.output_names:
            problems.append(
                f"predictions.{v.name}.output: {ref.output!r} is not an output of "
                f"{v.name} (has {', '.join(model.output_names)})"
            )
        elif ref.version and ref.version != model.version:
            warnings.append(
                f"variant {v.name}'s reference was scored by version {ref.version}, "
                f"version {model.version} serves: its prediction drift includes the change "
                "of model (run `streamer profile` again to compare like with like)"
            )
    return problems, warnings


# -- making a profile -------------------------------------------------------------------------


@dataclass(frozen=True)
class Profiled:
    """What `profile_topic` read and made."""

    profile: Profile
    read: int
    """Events read from the topic."""
    skipped: int
    """Events that did not decode (or had non-finite features), left out."""


def read_values(
    topology: Topology, topic: str, n: int, timeout_s: float = READ_TIMEOUT_S
) -> list[bytes | None]:
    """Up to `n` event values of `topic`: every partition from its beginning, until n are
    read or every partition is read to its end. Joins no consumer group."""
    reader = TopicReader(topology.kafka, topic)
    values: list[bytes | None] = []
    try:
        reader.start(timeout_s)
        deadline = time.monotonic() + timeout_s
        while len(values) < n and not reader.at_end:
            if time.monotonic() > deadline:
                raise StreamerError(
                    f"reading {topic}: {len(values)} of {n} events within {timeout_s:.0f}s"
                )
            values += [e.value for e in reader.poll(0.2, min(n - len(values), 1000))]
    finally:
        reader.close()
    return values[:n]


def build_profile(
    topology: Topology,
    models: Mapping[str, Model],
    features: np.ndarray,
    bins: int,
    *,
    source: str = "",
) -> Profile:
    """References of the feature matrix (decoded events) and of every served variant's main
    output, scoring those rows with its model."""
    features = np.asarray(features, dtype=np.float32)
    refs = {name: Reference.of(features[:, i], bins) for i, name in enumerate(topology.features)}
    predictions: dict[str, PredictionReference] = {}
    for v in topology.served:
        model = models[v.name]
        output = main_output(model)
        values = _score_main(model, output, features)
        if values.size == 0:
            raise StreamerError(f"variant {v.name}: no finite output on the profiled events")
        base = Reference.of(values, bins)
        predictions[v.name] = PredictionReference(
            base.edges, base.shares, base.mean, base.std, output, model.version
        )
    return Profile(
        features=refs,
        predictions=predictions,
        events=len(features),
        topology=topology.name,
        source=source,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _score_main(model: Model, output: str, features: np.ndarray) -> np.ndarray:
    """The main output of every row whose outputs are all finite (the rows an agent serves)."""
    parts = []
    for start in range(0, len(features), SCORE_CHUNK):
        chunk = features[start : start + SCORE_CHUNK]
        try:
            raw = model.predict(chunk)
        except Exception as exc:  # onnxruntime raises many types at run time
            raise StreamerError(
                f"{model.path}: scoring the profiled events raised: {first_line(exc)}"
            ) from None
        n = len(chunk)
        finite = np.ones(n, dtype=bool)
        for value in raw.values():
            if value.dtype.kind in "fc":
                finite &= np.isfinite(value.reshape(n, -1)).all(axis=1)
        parts.append(main_values(raw[output])[finite])
    return np.concatenate(parts) if parts else np.empty(0)


def profile_topic(
    topology: Topology,
    models: Mapping[str, Model],
    *,
    topic: str | None = None,
    events: int,
    bins: int | None = None,
    timeout_s: float = READ_TIMEOUT_S,
) -> Profiled:
    """A profile of up to `events` events of `topic` (default: the input topic), decoded
    with the topology's decoder and scored by every served variant."""
    topic = topic or topology.input.topic
    values = read_values(topology, topic, events, timeout_s)
    decoder = make_decoder(topology.input.format, topology.input.schema_)
    decoded = decode_batch(values, decoder, topology.features)
    good = len(decoded.ok)
    if good < MIN_PROFILE_EVENTS:
        raise StreamerError(
            f"{topic}: {good} decodable event(s) of {len(values)} read; a profile needs "
            f"at least {MIN_PROFILE_EVENTS}"
        )
    profile = build_profile(
        topology, models, decoded.features, bins or topology.drift.bins, source=topic
    )
    return Profiled(profile, len(values), len(values) - good)


# -- the sliding window ------------------------------------------------------------------------


class SlidingCounts:
    """Bin counts and value sums of the newest `size` events (a little more: the window moves
    in steps), as a ring of per-step vectors; adding a batch costs O(its vector size).

    A batch is added to the newest step while that step holds fewer than about
    size / WINDOW_STEPS events, else it starts a new step; the oldest step leaves once the
    others hold `size` events or more."""

    def __init__(self, size: int, width: int, sums: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self.step = max(1, size // WINDOW_STEPS)
        self.width = width
        capacity = size // self.step + 3
        self._counts = np.zeros((capacity, width), dtype=np.int64)
        self._sums = np.zeros((capacity, sums), dtype=np.float64)
        self._n = np.zeros(capacity, dtype=np.int64)
        self._head = 0
        self._len = 0
        self.n = 0
        """Events in the window."""

    def add(self, counts: np.ndarray, sums: np.ndarray, n: int) -> None:
        if n <= 0:
            return
        cap = len(self._n)
        newest = (self._head + self._len - 1) % cap
        if self._len == 0 or self._n[newest] >= self.step:
            newest = (self._head + self._len) % cap
            self._len += 1
        self._counts[newest] += counts
        self._sums[newest] += sums
        self._n[newest] += n
        self.n += n
        while self._len > 1 and self.n - self._n[self._head] >= self.size:
            self.n -= int(self._n[self._head])
            self._counts[self._head] = 0
            self._sums[self._head] = 0.0
            self._n[self._head] = 0
            self._head = (self._head + 1) % cap
            self._len -= 1

    def counts(self) -> np.ndarray:
        """Bin counts over the window (summed from its steps: exact)."""
        total: np.ndarray = self._counts.sum(axis=0)
        return total

    def sums(self) -> np.ndarray:
        """Value sums over the window, summed from its steps (so a huge value that left
        leaves no rounding residue behind)."""
        total: np.ndarray = self._sums.sum(axis=0)
        return total


# -- the agent's side ------------------------------------------------------------------------


@dataclass
class _VariantDrift:
    """One served variant: its window and the gauges it sets."""

    variant: str
    output: str | None
    """The main output watched (None: no prediction reference for this variant)."""
    edges: list[np.ndarray]
    """Per watched row (features, then the prediction): interior bin edges."""
    offsets: np.ndarray
    ref_shares: np.ndarray
    """(rows, width) reference shares, zero-padded."""
    ref_mean: np.ndarray
    ref_std: np.ndarray
    window: SlidingCounts
    gauges: list[Callable[[float], None]] = field(default_factory=list)
    above: set[str] = field(default_factory=set)
    """Features (and "prediction") whose PSI is above the threshold."""


class Drift:
    """Per served variant, bins the rows it scored (and their main outputs) into a sliding
    window every batch, and sets the drift gauges from the windows at most every
    `refresh_s` and whenever `flush` is called."""

    def __init__(
        self,
        topology: Topology,
        profile: Profile,
        metrics: Metrics,
        *,
        refresh_s: float = REFRESH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        spec = topology.drift
        self.features = list(topology.features)
        self.threshold = spec.threshold
        self.min_events = spec.events_needed
        self.metrics = metrics
        self.failed = False
        self.observed = 0
        """Rows added to the windows so far (served rows with finite outputs)."""
        self.refresh_s = refresh_s
        self._clock = clock
        self._refreshed_at = -math.inf
        self._stale: set[str] = set()
        """Variants with rows added since their gauges were last set."""
        self._variants: dict[str, _VariantDrift] = {}
        for v in topology.served:
            refs: list[Reference] = [profile.features[f] for f in self.features]
            pred = profile.predictions.get(v.name)
            if pred is not None:
                refs.append(pred)
            width = max(len(r.shares) for r in refs)
            shares = np.zeros((len(refs), width))
            for i, r in enumerate(refs):
                shares[i, : len(r.shares)] = r.shares
            self._variants[v.name] = _VariantDrift(
                variant=v.name,
                output=pred.output if pred is not None else None,
                edges=[r.edges for r in refs],
                offsets=(np.arange(len(refs)) * width)[:, None],
                ref_shares=shares,
                ref_mean=np.array([r.mean for r in refs]),
                ref_std=np.array([r.std for r in refs]),
                window=SlidingCounts(spec.window, len(refs) * width, len(refs)),
            )

    @classmethod
    def for_topology(
        cls, topology: Topology, models: Mapping[str, Model], metrics: Metrics
    ) -> Drift | None:
        """The drift tracker `topology.drift` asks for (None without a profile); ProfileError
        if the profile cannot serve."""
        path = topology.drift.profile
        if path is None:
            return None
        profile = load_profile(path)
        problems, warnings = check_profile(profile, topology, models)
        if problems:
            raise ProfileError(f"{topology.source}: drift.profile: {path}: {problems[0]}")
        for w in warnings:
            log.warning("drift.profile %s %s", path, w)
        log.info(
            "drift: against %s (%d events of %s), window %d events, threshold %.3g",
            path,
            profile.events,
            profile.source or "?",
            topology.drift.window,
            topology.drift.threshold,
        )
        return cls(topology, profile, metrics)

    @property
    def stale(self) -> bool:
        """Whether rows were added since the gauges were last set (`flush` sets them)."""
        return bool(self._stale) and not self.failed

    def observe(self, features: np.ndarray, scored: Sequence[VariantScores]) -> None:
        """Add one batch: `features` is its decoded matrix, `scored` what each variant
        scored. Never raises: a failure is logged once and stops drift measurement."""
        if self.failed:
            return
        try:
            for s in scored:
                tracked = None if s.shadow else self._variants.get(s.variant)
                if tracked is not None and len(s.rows):
                    self._add(tracked, features, s)
                    self._stale.add(s.variant)
            if self._clock() - self._refreshed_at >= self.refresh_s:
                self._flush()
        except Exception:
            self._fail()

    def flush(self) -> None:
        """Set the gauges of every variant that scored rows since they were last set."""
        if self._stale and not self.failed:
            try:
                self._flush()
            except Exception:
                self._fail()

    def _flush(self) -> None:
        for name in sorted(self._stale):
            self._refresh(self._variants[name])
        self._stale.clear()
        self._refreshed_at = self._clock()

    def _fail(self) -> None:
        self.failed = True
        log.exception("drift measurement failed; the drift gauges stop updating")

    def _add(self, t: _VariantDrift, features: np.ndarray, s: VariantScores) -> None:
        keep = s.finite
        every = bool(keep.all())
        rows = s.rows if every else s.rows[keep]
        if len(rows) == 0:
            return
        n_features = len(self.features)
        values = np.empty((len(t.edges), len(rows)), dtype=np.float64)
        values[:n_features] = (features if len(rows) == len(features) else features[rows]).T
        if t.output is not None:
            main = main_values_of_rows(s.outputs[t.output])
            values[n_features] = main if every else main[keep]
        index = np.empty(values.shape, dtype=np.intp)
        for i, edges in enumerate(t.edges):
            index[i] = np.searchsorted(edges, values[i], side="right")
        index += t.offsets
        counts = np.bincount(index.ravel(), minlength=t.window.width)
        t.window.add(counts, values.sum(axis=1), len(rows))
        self.observed += len(rows)

    def _refresh(self, t: _VariantDrift) -> None:
        n = t.window.n
        if n < self.min_events:
            return
        rows = len(t.edges)
        shares = t.window.counts().reshape(rows, -1) / n
        psis = psi(shares, t.ref_shares)
        shifts = mean_shift(t.window.sums() / n, t.ref_mean, t.ref_std)
        if not t.gauges:
            t.gauges = self._gauges(t)
        values = [*np.asarray(psis).tolist(), *shifts.tolist(), float(n)]
        for set_value, value in zip(t.gauges, values, strict=True):
            set_value(value)
        self._log_crossings(t, np.asarray(psis).tolist())

    def _gauges(self, t: _VariantDrift) -> list[Callable[[float], None]]:
        """Setters of the variant's gauges, in the order `_refresh` computes their values:
        PSI per feature (and of the prediction), mean shift likewise, window events."""
        m, v = self.metrics, t.variant
        psis = [m.feature_drift_psi.labels(f, v).set for f in self.features]
        shifts = [m.feature_drift_mean_shift.labels(f, v).set for f in self.features]
        if t.output is not None:
            psis.append(m.prediction_drift_psi.labels(v).set)
            shifts.append(m.prediction_drift_mean_shift.labels(v).set)
        return [*psis, *shifts, m.drift_window_events.labels(v).set]

    def _log_crossings(self, t: _VariantDrift, psis: list[float]) -> None:
        names = [*self.features, *(["prediction"] if t.output is not None else [])]
        for name, value in zip(names, psis, strict=True):
            what = f"feature {name}" if name != "prediction" else f"prediction ({t.output})"
            if value > self.threshold and name not in t.above:
                t.above.add(name)
                log.warning(
                    "drift: variant %s %s: PSI %.3f is above drift.threshold %.3g "
                    "(the last %d events)",
                    t.variant,
                    what,
                    value,
                    self.threshold,
                    t.window.n,
                )
            elif value <= self.threshold and name in t.above:
                t.above.discard(name)
                log.info(
                    "drift: variant %s %s: PSI %.3f is back within drift.threshold %.3g",
                    t.variant,
                    what,
                    value,
                    self.threshold,
                )
