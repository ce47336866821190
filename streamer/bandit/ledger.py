"""The join of decisions (served lake records) with their delayed rewards, for one partition.

Pure Python, no Kafka: the controller feeds it lake and feedback records in the order it
reads them and asks it to close windows as time passes. What it counts becomes `Evidence`
for the policies, decayed as it ages.

Recovery. A checkpoint holds the evidence and the input offsets it includes. After a
restart the controller re-reads both topics from two reward windows before the checkpoint
(a reward may wait a window for its decision, which waits a window for its reward);
records below the checkpoint offsets are *replayed*: they rebuild the pending decisions but
a join is counted only when at least one side of it is new (a decision and a reward that
were both read before the checkpoint were counted before it).
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from streamer.bandit.policies import Evidence, Reward


class Result(StrEnum):
    """What became of a reward or a decision (the `result` label of the reward metric)."""

    JOINED = "joined"
    """A reward joined to its decision (or echoing its variant) and counted."""
    DEFAULTED = "defaulted"
    """A decision whose window closed without a reward got `default_reward`."""
    EXPIRED = "expired"
    """A decision whose window closed without a reward was dropped (no default_reward)."""
    UNKNOWN = "unknown"
    """A reward for an id never served here (its waiting for the lake record ran out)."""
    LATE = "late"
    """A reward that came after its decision's window closed."""
    DUPLICATE = "duplicate"
    """A second reward for a decision (the first counts)."""
    EVICTED = "evicted"
    """A decision dropped unrewarded because `max_pending` decisions were waiting."""
    INVALID = "invalid"
    """A feedback record that is not `{"id", "reward": number}` (or out of [0, 1] for
    binary rewards)."""


_VARIANT_BITS = 8
_PROPENSITY_BITS = 16
_FLAG_BITS = 1
_PROPENSITY_SCALE = (1 << _PROPENSITY_BITS) - 1
MAX_VARIANTS = 1 << _VARIANT_BITS
TIME_RESOLUTION_S = 0.01
"""Decision times are kept in 10 ms steps (packed into one int with variant and propensity)."""


def _pack(variant: int, propensity: float, t: float, flag: bool) -> int:
    """One int for (variant index, propensity, time, flag): a pending decision's flag says
    it was replayed, a closed one's that it was rewarded."""
    ticks = int(t / TIME_RESOLUTION_S)
    q = round(min(max(propensity, 0.0), 1.0) * _PROPENSITY_SCALE)
    return (((ticks << _PROPENSITY_BITS) | q) << _VARIANT_BITS | variant) << 1 | flag


def _unpack(packed: int) -> tuple[int, float, float, bool]:
    flag = bool(packed & 1)
    packed >>= _FLAG_BITS
    variant = packed & (MAX_VARIANTS - 1)
    packed >>= _VARIANT_BITS
    propensity = (packed & _PROPENSITY_SCALE) / _PROPENSITY_SCALE
    ticks = packed >> _PROPENSITY_BITS
    return variant, propensity, ticks * TIME_RESOLUTION_S, flag


@dataclass(frozen=True)
class LedgerSettings:
    """The bandit section's knobs that decide what counts (see `config.BanditSpec`)."""

    variants: Sequence[str]
    window_s: float
    default_reward: float | None
    reward: Reward
    max_pending: int
    decay: float
    decay_interval_s: float


@dataclass
class Checkpoint:
    """What a partition's ledger has counted, and up to which offsets (exclusive)."""

    lake_offset: int
    feedback_offset: int
    as_of: float
    """Epoch seconds the evidence is decayed to; windows closed up to then are counted."""
    evidence: dict[str, Evidence]
    counted: dict[str, list[float]] = field(default_factory=dict)
    """Variant -> [rewards counted, their sum], never decayed (for audits and metrics)."""
    results: dict[str, int] = field(default_factory=dict)
    """Result -> how many, never decayed."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "lake_offset": self.lake_offset,
            "feedback_offset": self.feedback_offset,
            "as_of": self.as_of,
            "evidence": {k: [e.n, e.total, e.squares] for k, e in self.evidence.items()},
            "counted": self.counted,
            "results": self.results,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Checkpoint:
        return cls(
            lake_offset=int(raw["lake_offset"]),
            feedback_offset=int(raw["feedback_offset"]),
            as_of=float(raw["as_of"]),
            evidence={k: Evidence(*map(float, v)) for k, v in raw["evidence"].items()},
            counted={k: [float(x) for x in v] for k, v in raw.get("counted", {}).items()},
            results={k: int(v) for k, v in raw.get("results", {}).items()},
        )


OnCount = Callable[[str, Result, float | None], None]
"""Called with (variant or "", result, reward) for everything the ledger decides."""


class Ledger:
    """Pending decisions, rewards waiting for their decision, and the evidence counted."""

    def __init__(
        self,
        settings: LedgerSettings,
        checkpoint: Checkpoint | None = None,
        on_count: OnCount | None = None,
    ) -> None:
        if len(settings.variants) > MAX_VARIANTS:
            raise ValueError(f"at most {MAX_VARIANTS} variants")
        self.settings = settings
        self._index = {name: i for i, name in enumerate(settings.variants)}
        self._on_count = on_count
        self.pending: dict[str, int] = {}
        """id -> packed (variant, propensity, decision time, replayed)."""
        self._pending_order: deque[str] = deque()
        self.waiting: dict[str, tuple[float, float, bool]] = {}
        """id -> (reward, arrival time, replayed): rewards that came before their
        decision's lake record."""
        self._waiting_order: deque[str] = deque()
        self.closed: dict[str, int] = {}
        """id -> packed (variant, when it closed, rewarded): closed decisions are
        remembered a window long, to tell duplicates and late rewards apart from new ones."""
        self._closed_order: deque[str] = deque()
        cp = checkpoint or Checkpoint(0, 0, 0.0, {})
        self.lake_offset = cp.lake_offset
        self.feedback_offset = cp.feedback_offset
        self.restored_as_of = cp.as_of
        """Checkpoint time: decisions read below lake_offset whose window closed by then
        were counted before it."""
        self._lake_until, self._feedback_until = cp.lake_offset, cp.feedback_offset
        self._lake_replayed = cp.lake_offset == 0
        self._feedback_replayed = cp.feedback_offset == 0
        self.feedback_time = 0.0
        """The latest feedback timestamp read (how far the reward stream has been read)."""
        self.as_of = cp.as_of
        self.evidence = {name: cp.evidence.get(name, Evidence()) for name in settings.variants}
        self.counted = {name: list(cp.counted.get(name, [0.0, 0.0])) for name in settings.variants}
        self.results: Counter[str] = Counter(cp.results)

    # -- input -------------------------------------------------------------------------------
    def decision(
        self, event_id: str, variant: str, propensity: float, t: float, offset: int
    ) -> None:
        """A served lake record (at lake `offset`, decided at epoch seconds `t`)."""
        replayed = offset < self.lake_offset
        if not replayed:
            self.lake_offset = offset + 1
        self._lake_replayed = self._lake_replayed or offset >= self._lake_until - 1
        index = self._index.get(variant)
        if index is None or event_id in self.pending or event_id in self.closed:
            return  # an unknown variant, or a repeat (at-least-once): counted once
        if replayed and t + self.settings.window_s <= self.restored_as_of:
            # Its window had closed, and was counted, before the checkpoint; a re-read
            # reward waiting for it was counted with it then.
            early = self.waiting.get(event_id)
            rewarded = early is not None and early[2]
            if rewarded:
                del self.waiting[event_id]
            self._close(event_id, index, t + self.settings.window_s, rewarded=rewarded)
            return
        early = self.waiting.pop(event_id, None)
        if early is not None:
            reward, arrived, early_replayed = early
            self._close(event_id, index, arrived, rewarded=True)
            counted = not (replayed and early_replayed)
            if arrived - t > self.settings.window_s:
                self._close_window(variant, counted, at=t + self.settings.window_s)
                self._count(variant, Result.LATE, None, counted=counted)
            else:
                self._reward(variant, reward, arrived, counted=counted)
            return
        self.pending[event_id] = _pack(index, propensity, t, replayed)
        self._pending_order.append(event_id)
        if len(self.pending) > self.settings.max_pending:
            self._evict()

    def passed(self, offset: int) -> None:
        """A lake record at `offset` that is no decision (a shadow's, or unreadable)."""
        self.lake_offset = max(self.lake_offset, offset + 1)
        self._lake_replayed = self._lake_replayed or offset >= self._lake_until - 1

    def replay_from(self, lake_offset: int, feedback_offset: int) -> None:
        """Where re-reading starts after a restart: nothing below the checkpoint offsets to
        re-read means the replay of that topic is already done."""
        self._lake_replayed = self._lake_replayed or lake_offset >= self._lake_until
        self._feedback_replayed = self._feedback_replayed or feedback_offset >= self._feedback_until

    @property
    def replaying(self) -> bool:
        """Still re-reading what the checkpoint already counted: until both topics are past
        its offsets, no window closes after the checkpoint's time (a reward counted before
        it may not have been re-read yet)."""
        return not (self._lake_replayed and self._feedback_replayed)

    def feedback(self, raw: Any, t: float, offset: int) -> Result | None:
        """A feedback record's decoded value (at feedback `offset`, arrived at `t`); what
        became of it, or None while it waits for its decision's lake record."""
        replayed = offset < self.feedback_offset
        if not replayed:
            self.feedback_offset = offset + 1
        self._feedback_replayed = self._feedback_replayed or offset >= self._feedback_until - 1
        self.feedback_time = max(self.feedback_time, t)
        parsed = self._parse(raw)
        if parsed is None:
            return self._count("", Result.INVALID, None, counted=not replayed)
        event_id, reward, echoed = parsed
        closed = self.closed.get(event_id)
        if closed is not None:
            index, _, closed_at, rewarded = _unpack(closed)
            if replayed and not rewarded and t <= closed_at:
                # Re-read: it was rewarded in time before the checkpoint (and counted).
                self.closed[event_id] = _pack(index, 0.0, t, True)
                return Result.JOINED
            result = Result.DUPLICATE if rewarded else Result.LATE
            variant = self.settings.variants[index]
            return self._count(variant, result, None, counted=not replayed)
        packed = self.pending.pop(event_id, None)
        if packed is not None:
            return self._join(event_id, packed, reward, t, replayed)
        if echoed:  # the client echoed the variant: no join needed
            self._close(event_id, self._index[echoed], t, rewarded=True)
            return self._reward(echoed, reward, t, counted=not replayed)
        return self._wait(event_id, reward, t, replayed)

    def _join(self, event_id: str, packed: int, reward: float, t: float, replayed: bool) -> Result:
        index, _, decided, decision_replayed = _unpack(packed)
        variant = self.settings.variants[index]
        self._close(event_id, index, t, rewarded=True)
        counted = not (replayed and decision_replayed)
        if t - decided > self.settings.window_s:
            # Its window closed while nobody was looking (the controller was down).
            self._close_window(variant, counted)
            return self._count(variant, Result.LATE, None, counted=counted)
        return self._reward(variant, reward, t, counted=counted)

    def _wait(self, event_id: str, reward: float, t: float, replayed: bool) -> Result | None:
        """A reward before its decision: it waits (a window at most) for the lake record."""
        if event_id in self.waiting:
            return self._count("", Result.DUPLICATE, None, counted=not replayed)
        self.waiting[event_id] = (reward, t, replayed)
        self._waiting_order.append(event_id)
        if len(self.waiting) > self.settings.max_pending:
            self._expire_waiting(-math.inf)  # over the cap: the oldest give up
        return None

    def _parse(self, raw: Any) -> tuple[str, float, str | None] | None:
        if not isinstance(raw, dict):
            return None
        event_id, reward, echoed = raw.get("id"), raw.get("reward"), raw.get("variant")
        if isinstance(event_id, int) and not isinstance(event_id, bool):
            event_id = str(event_id)
        if not isinstance(event_id, str) or not event_id:
            return None
        if isinstance(reward, bool) or not isinstance(reward, int | float):
            return None
        reward = float(reward)
        if not math.isfinite(reward):
            return None
        if self.settings.reward == "binary" and not 0.0 <= reward <= 1.0:
            return None
        if echoed is not None and echoed not in self._index:
            echoed = None  # an unknown variant: join by id instead
        return event_id, reward, echoed

    # -- time --------------------------------------------------------------------------------
    def expire(self, now: float) -> None:
        """Close every window that ran out by `now` (default reward or drop), give up on
        rewards that waited a window for their decision, forget ids closed a window ago."""
        aged_to = now
        if self.replaying:
            now = min(now, self.restored_as_of)
        window = self.settings.window_s
        while self._pending_order:
            event_id = self._pending_order[0]
            packed = self.pending.get(event_id)
            if packed is None:
                self._pending_order.popleft()  # rewarded meanwhile
                continue
            index, _, decided, _ = _unpack(packed)
            if decided + window > now:
                break
            self._pending_order.popleft()
            del self.pending[event_id]
            self._close(event_id, index, decided + window, rewarded=False)
            self._close_window(self.settings.variants[index], counted=True, at=decided + window)
        self._expire_waiting(now - window)
        while self._closed_order:
            event_id = self._closed_order[0]
            closed = self.closed.get(event_id)
            if closed is not None and _unpack(closed)[2] + window > now:
                break
            self._closed_order.popleft()
            self.closed.pop(event_id, None)
        self._decay_to(aged_to)

    def _expire_waiting(self, before: float) -> None:
        while self._waiting_order:
            event_id = self._waiting_order[0]
            early = self.waiting.get(event_id)
            if early is None:
                self._waiting_order.popleft()
                continue
            if early[1] > before and len(self.waiting) <= self.settings.max_pending:
                break
            self._waiting_order.popleft()
            del self.waiting[event_id]
            # Still waiting at the checkpoint: never counted before it.
            counted = not early[2] or early[1] + self.settings.window_s > self.restored_as_of
            self._count("", Result.UNKNOWN, None, counted=counted)

    def _evict(self) -> None:
        while len(self.pending) > self.settings.max_pending and self._pending_order:
            event_id = self._pending_order.popleft()
            packed = self.pending.pop(event_id, None)
            if packed is not None:
                variant = self.settings.variants[_unpack(packed)[0]]
                self._count(variant, Result.EVICTED, None, counted=True)

    # -- counting ------------------------------------------------------------------------------
    def _close(self, event_id: str, variant: int, at: float, *, rewarded: bool) -> None:
        self.closed[event_id] = _pack(variant, 0.0, at, rewarded)
        self._closed_order.append(event_id)
        while len(self.closed) > self.settings.max_pending and self._closed_order:
            self.closed.pop(self._closed_order.popleft(), None)

    def _close_window(self, variant: str, counted: bool, at: float | None = None) -> None:
        default = self.settings.default_reward
        if default is None:
            self._count(variant, Result.EXPIRED, None, counted=counted)
        else:
            self._reward(
                variant,
                default,
                at if at is not None else self.as_of,
                counted,
                result=Result.DEFAULTED,
            )

    def _reward(
        self,
        variant: str,
        reward: float,
        t: float,
        counted: bool,
        result: Result = Result.JOINED,
    ) -> Result:
        if counted:
            self._decay_to(t)
            e = self.evidence[variant]
            self.evidence[variant] = Evidence(e.n + 1.0, e.total + reward, e.squares + reward**2)
            c = self.counted[variant]
            c[0] += 1.0
            c[1] += reward
        return self._count(variant, result, reward, counted=counted)

    def _count(
        self, variant: str, result: Result, reward: float | None, *, counted: bool
    ) -> Result:
        if counted:
            self.results[result.value] += 1
            if self._on_count is not None:
                self._on_count(variant, result, reward)
        return result

    def _decay_to(self, t: float) -> None:
        """Age the evidence to time `t` (it never runs backwards)."""
        if t <= self.as_of:
            return
        s = self.settings
        if s.decay < 1.0 and self.as_of > 0:
            factor = s.decay ** ((t - self.as_of) / s.decay_interval_s)
            self.evidence = {k: e.scaled(factor) for k, e in self.evidence.items()}
        self.as_of = t

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self, now: float | None = None) -> Checkpoint:
        """The state to persist: windows closed up to `now` are counted first."""
        self.expire(now if now is not None else time.time())
        return Checkpoint(
            lake_offset=self.lake_offset,
            feedback_offset=self.feedback_offset,
            as_of=self.as_of,
            evidence=dict(self.evidence),
            counted={k: list(v) for k, v in self.counted.items()},
            results=dict(self.results),
        )


def evidence_at(checkpoint: Checkpoint, t: float, settings: LedgerSettings) -> dict[str, Evidence]:
    """A checkpoint's evidence aged to time `t` (to merge partitions consistently)."""
    if settings.decay >= 1.0 or t <= checkpoint.as_of:
        return dict(checkpoint.evidence)
    factor = settings.decay ** ((t - checkpoint.as_of) / settings.decay_interval_s)
    return {k: e.scaled(factor) for k, e in checkpoint.evidence.items()}
