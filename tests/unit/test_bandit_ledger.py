"""Ledger: the join of lake decisions with delayed rewards, what it counts, decay,
checkpoints and recovery (a restarted ledger counts every decision exactly once)."""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import random
import tracemalloc
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from streamer.bandit.ledger import (
    MAX_VARIANTS,
    TIME_RESOLUTION_S,
    Checkpoint,
    Ledger,
    LedgerSettings,
    Result,
    _pack,
    _unpack,
    evidence_at,
)
from streamer.bandit.policies import Evidence

T0 = 1_700_000_000.0
WINDOW = 30.0
VARIANTS = ("champion", "challenger", "canary")


def settings(**changes: Any) -> LedgerSettings:
    base = LedgerSettings(
        variants=VARIANTS,
        window_s=WINDOW,
        default_reward=None,
        reward="binary",
        max_pending=1_000_000,
        decay=1.0,
        decay_interval_s=10.0,
    )
    return dataclasses.replace(base, **changes)


Count = tuple[str, Result, float | None]


class Recorder:
    """An `on_count` callback that keeps everything it is told."""

    def __init__(self) -> None:
        self.calls: list[Count] = []

    def __call__(self, variant: str, result: Result, reward: float | None) -> None:
        self.calls.append((variant, result, reward))

    def results(self) -> Counter[str]:
        return Counter(result.value for _, result, _ in self.calls)


def ledger(**changes: Any) -> tuple[Ledger, Recorder]:
    recorder = Recorder()
    return Ledger(settings(**changes), on_count=recorder), recorder


class Feed:
    """Hands a ledger lake and feedback records with increasing offsets, as Kafka would."""

    def __init__(self, target: Ledger) -> None:
        self.ledger = target
        self.lake = 0
        self.feedback_offset = 0

    def decide(self, event_id: str, variant: str, t: float, propensity: float = 0.5) -> None:
        self.ledger.decision(event_id, variant, propensity, t, self.lake)
        self.lake += 1

    def reward(self, raw: Any, t: float) -> Result | None:
        result = self.ledger.feedback(raw, t, self.feedback_offset)
        self.feedback_offset += 1
        return result


def fb(event_id: str, reward: Any, variant: str | None = None) -> dict[str, Any]:
    raw: dict[str, Any] = {"id": event_id, "reward": reward}
    if variant is not None:
        raw["variant"] = variant
    return raw


# -- one result each ---------------------------------------------------------------------------


def test_joined() -> None:
    lg, rec = ledger()
    feed = Feed(lg)
    feed.decide("e1", "challenger", T0)
    assert feed.reward(fb("e1", 1.0), T0 + 5) is Result.JOINED
    assert rec.calls == [("challenger", Result.JOINED, 1.0)]
    assert lg.results == Counter({"joined": 1})
    assert lg.counted["challenger"] == [1.0, 1.0]
    assert lg.counted["champion"] == [0.0, 0.0]
    assert lg.evidence["challenger"] == Evidence(1.0, 1.0, 1.0)
    assert lg.pending == {}
    lg.expire(T0 + 10 * WINDOW)  # nothing left to close
    assert rec.calls == [("challenger", Result.JOINED, 1.0)]


def test_reward_on_the_window_edge_joins() -> None:
    lg, rec = ledger()
    feed = Feed(lg)
    feed.decide("e1", "champion", T0)
    assert feed.reward(fb("e1", 0.0), T0 + WINDOW) is Result.JOINED
    assert rec.calls == [("champion", Result.JOINED, 0.0)]


def test_integer_ids_join_string_ids() -> None:
    lg, rec = ledger()
    feed = Feed(lg)
    feed.decide("42", "champion", T0)
    assert feed.reward({"id": 42, "reward": 1}, T0 + 1) is Result.JOINED
    assert rec.calls == [("champion", Result.JOINED, 1.0)]


def test_feedback_before_its_decision_waits_then_joins() -> None:
    lg, rec = ledger()
    feed = Feed(lg)
    assert feed.reward(fb("e1", 1.0), T0 + 1) is None
    assert rec.calls == []
    assert "e1" in lg.waiting
    lg.expire(T0 + 2)
    feed.decide("e1", "canary", T0)
    assert rec.calls == [("canary", Result.JOINED, 1.0)]
    assert lg.counted["canary"] == [1.0, 1.0]
    assert "e1" not in lg.waiting and "e1" not in lg.pending
    lg.expire(T0 + 10 * WINDOW)
    assert rec.results() == Counter({"joined": 1})


@pytest.mark.parametrize(("default", "closing"), [(None, Result.EXPIRED), (0.0, Result.DEFAULTED)])
def test_reward_after_the_window_is_late_and_the_decision_closes_unrewarded(
    default: float | None, closing: Result
) -> None:
    lg, rec = ledger(default_reward=default)
    feed = Feed(lg)
    feed.decide("e1", "champion", T0)
    assert feed.reward(fb("e1", 1.0), T0 + WINDOW + 0.5) is Result.LATE
    assert rec.results() == Counter({"late": 1, closing.value: 1})
    assert ("champion", closing, default) in rec.calls
    expected = [0.0, 0.0] if default is None else [1.0, default]
    assert lg.counted["champion"] == expected
    lg.expire(T0 + 10 * WINDOW)
    assert len(rec.calls) == 2


@pytest.mark.parametrize(("default", "closing"), [(None, Result.EXPIRED), (0.0, Result.DEFAULTED)])
def test_reward_after_expire_closed_the_window_is_late(
    default: float | None, closing: Result
) -> None:
    lg, rec = ledger(default_reward=default)
    feed = Feed(lg)
    feed.decide("e1", "champion", T0)
    lg.expire(T0 + WINDOW)
    assert rec.calls == [("champion", closing, default)]
    assert feed.reward(fb("e1", 1.0), T0 + WINDOW + 1) is Result.LATE
    assert [c[1] for c in rec.calls] == [closing, Result.LATE]
    assert lg.counted["champion"] == ([0.0, 0.0] if default is None else [1.0, 0.0])


@pytest.mark.parametrize(("default", "closing"), [(None, Result.EXPIRED), (0.0, Result.DEFAULTED)])
def test_late_reward_read_before_its_decision_still_closes_the_decision(
    default: float | None, closing: Result
) -> None:
    lg, rec = ledger(default_reward=default)
    feed = Feed(lg)
    assert feed.reward(fb("e1", 1.0), T0 + WINDOW + 5) is None  # the lake consumer lags
    feed.decide("e1", "champion", T0)
    # Same outcome as when the lake record is read first (the test above).
    assert rec.results() == Counter({"late": 1, closing.value: 1})


def test_duplicate_feedback_first_counts() -> None:
    lg, rec = ledger()
    feed = Feed(lg)
    feed.decide("e1", "champion", T0)
    assert feed.reward(fb("e1", 0.0), T0 + 1) is Result.JOINED
    assert feed.reward(fb("e1", 1.0), T0 + 2) is Result.DUPLICATE
    assert [c[1] for c in rec.calls] == [Result.JOINED, Result.DUPLICATE]
    assert rec.calls[1][2] is None
    assert lg.counted["champion"] == [1.0, 0.0]
    assert lg.evidence["champion"] == Evidence(1.0, 0.0, 0.0)


def test_duplicate_feedback_while_waiting_for_the_decision() -> None:
    lg, rec = ledger()
    feed = Feed(lg)
    assert feed.reward(fb("e1", 1.0), T0 + 1) is None
    assert feed.reward(fb("e1", 0.0), T0 + 2) is Result.DUPLICATE
    feed.decide("e1", "challenger", T0)
    assert [(c[1], c[2]) for c in rec.calls] == [
        (Result.DUPLICATE, None),
        (Result.JOINED, 1.0),
    ]
    assert lg.counted["challenger"] == [1.0, 1.0]


def test_duplicate_after_a_late_reward_is_late_again() -> None:
    lg, rec = ledger()
    feed = Feed(lg)
    feed.decide("e1", "champion", T0)
    lg.expire(T0 + WINDOW + 1)
    feed.reward(fb("e1", 1.0), T0 + WINDOW + 2)
    feed.reward(fb("e1", 1.0), T0 + WINDOW + 3)
    assert rec.results() == Counter({"expired": 1, "late": 2})


def test_unknown_id_is_counted_after_a_window() -> None:
    lg, rec = ledger()
    feed = Feed(lg)
    assert feed.reward(fb("ghost", 1.0), T0) is None
    lg.expire(T0 + WINDOW - 1)
    assert rec.calls == []
    assert "ghost" in lg.waiting
    lg.expire(T0 + WINDOW)
    assert rec.calls == [("", Result.UNKNOWN, None)]
    assert lg.waiting == {}
    assert sum(c[0] for c in lg.counted.values()) == 0.0
    lg.expire(T0 + 10 * WINDOW)
    assert len(rec.calls) == 1


def test_decision_after_its_waiting_reward_gave_up_is_not_joined() -> None:
    lg, rec = ledger(default_reward=0.0)
    feed = Feed(lg)
    feed.reward(fb("e1", 1.0), T0)
    lg.expire(T0 + WINDOW)
    feed.decide("e1", "champion", T0 + WINDOW + 1)
    lg.expire(T0 + 3 * WINDOW)
    assert rec.results() == Counter({"unknown": 1, "defaulted": 1})
    assert lg.counted["champion"] == [1.0, 0.0]


@pytest.mark.parametrize("rewarded", [False, True])
def test_repeated_lake_record_counts_once(rewarded: bool) -> None:
    lg, rec = ledger(default_reward=0.0)
    feed = Feed(lg)
    feed.decide("e1", "champion", T0)
    feed.decide("e1", "champion", T0)  # at-least-once: the same record again
    if rewarded:
        feed.reward(fb("e1", 1.0), T0 + 1)
    feed.decide("e1", "champion", T0 + 2)  # and once more, after the join
    assert len(lg.pending) == (0 if rewarded else 1)
    lg.expire(T0 + WINDOW)
    feed.decide("e1", "champion", T0 + 3)  # and after its window closed
    lg.expire(T0 + 2 * WINDOW + 5)
    assert len(rec.calls) == 1
    assert rec.results() == Counter({"joined" if rewarded else "defaulted": 1})
    assert lg.counted["champion"] == [1.0, 1.0 if rewarded else 0.0]


def test_default_reward_at_window_close() -> None:
    lg, rec = ledger(default_reward=0.25)
    feed = Feed(lg)
    feed.decide("e1", "champion", T0)
    feed.decide("e2", "challenger", T0 + 10)
    feed.reward(fb("e2", 1.0), T0 + 11)
    before = lg.evidence["champion"]
    lg.expire(T0 + WINDOW - 0.01)
    assert [c[1] for c in rec.calls] == [Result.JOINED]
    lg.expire(T0 + WINDOW)
    assert rec.calls[-1] == ("champion", Result.DEFAULTED, 0.25)
    after = lg.evidence["champion"]
    assert after.n == before.n + 1
    assert after.total == pytest.approx(before.total + 0.25)
    assert after.squares == pytest.approx(before.squares + 0.0625)
    assert lg.counted["champion"] == [1.0, 0.25]
    assert lg.results == Counter({"joined": 1, "defaulted": 1})


def test_no_default_reward_expires_without_evidence() -> None:
    lg, rec = ledger(default_reward=None)
    feed = Feed(lg)
    feed.decide("e1", "champion", T0)
    lg.expire(T0 + WINDOW)
    assert rec.calls == [("champion", Result.EXPIRED, None)]
    assert lg.evidence["champion"] == Evidence()
    assert lg.counted["champion"] == [0.0, 0.0]
    assert lg.pending == {}


def test_echoed_variant_counts_without_a_lake_record() -> None:
    lg, rec = ledger(default_reward=0.0)
    feed = Feed(lg)
    assert feed.reward(fb("e1", 1.0, variant="canary"), T0 + 1) is Result.JOINED
    assert rec.calls == [("canary", Result.JOINED, 1.0)]
    assert lg.waiting == {}
    feed.decide("e1", "canary", T0)  # the lake record comes later: already counted
    assert lg.pending == {}
    lg.expire(T0 + 3 * WINDOW)
    assert rec.calls == [("canary", Result.JOINED, 1.0)]
    assert lg.counted["canary"] == [1.0, 1.0]


def test_echoed_variant_of_a_pending_decision_joins_it_once() -> None:
    lg, rec = ledger(default_reward=0.0)
    feed = Feed(lg)
    feed.decide("e1", "champion", T0)
    assert feed.reward(fb("e1", 1.0, variant="champion"), T0 + 1) is Result.JOINED
    lg.expire(T0 + 3 * WINDOW)
    assert rec.calls == [("champion", Result.JOINED, 1.0)]


def test_unknown_echoed_variant_joins_by_id() -> None:
    lg, rec = ledger()
    feed = Feed(lg)
    assert feed.reward(fb("e1", 1.0, variant="nope"), T0 + 1) is None
    feed.decide("e1", "challenger", T0)
    assert rec.calls == [("challenger", Result.JOINED, 1.0)]


def test_decision_of_an_unknown_variant_is_ignored() -> None:
    lg, rec = ledger(default_reward=0.0)
    feed = Feed(lg)
    feed.decide("e1", "retired", T0)
    lg.expire(T0 + 3 * WINDOW)
    assert rec.calls == []
    assert lg.lake_offset == 1  # but read


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "e1",
        ["e1", 1.0],
        42,
        {},
        {"reward": 1.0},
        {"id": None, "reward": 1.0},
        {"id": "", "reward": 1.0},
        {"id": True, "reward": 1.0},
        {"id": 1.5, "reward": 1.0},
        {"id": ["e1"], "reward": 1.0},
        {"id": "e1"},
        {"id": "e1", "reward": None},
        {"id": "e1", "reward": "1"},
        {"id": "e1", "reward": "yes"},
        {"id": "e1", "reward": True},
        {"id": "e1", "reward": False},
        {"id": "e1", "reward": math.nan},
        {"id": "e1", "reward": math.inf},
        {"id": "e1", "reward": -math.inf},
        {"id": "e1", "reward": 2.0},
        {"id": "e1", "reward": -0.5},
        {"id": "e1", "reward": 1.0000001},
        {"id": "e1", "reward": [1.0]},
    ],
)
def test_invalid_feedback(raw: Any) -> None:
    lg, rec = ledger(reward="binary", default_reward=0.0)
    feed = Feed(lg)
    feed.decide("e1", "champion", T0)
    assert feed.reward(raw, T0 + 1) is Result.INVALID
    assert rec.calls == [("", Result.INVALID, None)]
    assert "e1" in lg.pending  # the decision still waits for a valid reward
    assert feed.reward(fb("e1", 1.0), T0 + 2) is Result.JOINED


@pytest.mark.parametrize("reward", [0, 1, 0.0, 0.5, 1.0])
def test_binary_accepts_rewards_in_zero_one(reward: float) -> None:
    lg, rec = ledger(reward="binary")
    feed = Feed(lg)
    feed.decide("e1", "champion", T0)
    assert feed.reward(fb("e1", reward), T0 + 1) is Result.JOINED
    assert rec.calls == [("champion", Result.JOINED, float(reward))]


@pytest.mark.parametrize("reward", [-1e9, -2.5, 0, 2.0, 37, 1e12, 5e-324])
def test_continuous_accepts_any_finite_number(reward: float) -> None:
    lg, rec = ledger(reward="continuous")
    feed = Feed(lg)
    feed.decide("e1", "champion", T0)
    assert feed.reward(fb("e1", reward), T0 + 1) is Result.JOINED
    assert rec.calls == [("champion", Result.JOINED, float(reward))]
    assert lg.evidence["champion"] == Evidence(1.0, float(reward), float(reward) ** 2)


@pytest.mark.parametrize("reward", [math.nan, math.inf, "3", True])
def test_continuous_rejects_what_is_not_a_finite_number(reward: Any) -> None:
    lg, rec = ledger(reward="continuous")
    feed = Feed(lg)
    feed.decide("e1", "champion", T0)
    assert feed.reward(fb("e1", reward), T0 + 1) is Result.INVALID
    assert rec.calls == [("", Result.INVALID, None)]


def test_max_pending_evicts_the_oldest_first() -> None:
    lg, rec = ledger(max_pending=3, default_reward=0.0)
    feed = Feed(lg)
    for i, variant in enumerate(["champion", "challenger", "canary", "champion", "canary"]):
        feed.decide(f"e{i}", variant, T0 + i)
    assert rec.calls == [
        ("champion", Result.EVICTED, None),
        ("challenger", Result.EVICTED, None),
    ]
    assert list(lg.pending) == ["e2", "e3", "e4"]
    assert feed.reward(fb("e3", 1.0), T0 + 5) is Result.JOINED
    feed.decide("e5", "challenger", T0 + 6)  # room again: nothing evicted
    assert len(rec.calls) == 3
    lg.expire(T0 + 10 * WINDOW)
    assert rec.results() == Counter({"evicted": 2, "joined": 1, "defaulted": 3})
    assert sum(c[0] for c in lg.counted.values()) == 4.0  # evicted ones earn nothing


def test_max_pending_also_bounds_rewards_waiting_for_their_decision() -> None:
    lg, rec = ledger(max_pending=2)
    feed = Feed(lg)
    for i in range(4):
        feed.reward(fb(f"early{i}", 1.0), T0 + i)
    assert set(lg.waiting) == {"early2", "early3"}
    assert rec.results() == Counter({"unknown": 2})


def test_too_many_variants_are_refused() -> None:
    names = tuple(f"v{i}" for i in range(MAX_VARIANTS + 1))
    with pytest.raises(ValueError, match="variants"):
        Ledger(settings(variants=names))
    Ledger(settings(variants=names[:MAX_VARIANTS]))


def test_offsets_advance_only_with_new_records() -> None:
    lg = Ledger(settings(), Checkpoint(10, 20, T0, {}))
    lg.decision("old", "champion", 0.5, T0 - 5, 3)
    lg.feedback(fb("x", 1.0), T0 - 5, 4)
    assert (lg.lake_offset, lg.feedback_offset) == (10, 20)
    lg.decision("new", "champion", 0.5, T0 + 1, 12)
    lg.feedback(fb("y", 1.0), T0 + 1, 25)
    assert (lg.lake_offset, lg.feedback_offset) == (13, 26)


# -- time and decay ----------------------------------------------------------------------------


def test_decay_halves_evidence_per_interval() -> None:
    lg, _ = ledger(decay=0.5, decay_interval_s=10.0)
    feed = Feed(lg)
    feed.decide("e1", "champion", T0)
    feed.reward(fb("e1", 1.0), T0)
    assert lg.evidence["champion"] == Evidence(1.0, 1.0, 1.0)
    lg.expire(T0 + 10)
    e = lg.evidence["champion"]
    assert (e.n, e.total, e.squares) == pytest.approx((0.5, 0.5, 0.5))
    lg.expire(T0 + 25)
    assert lg.evidence["champion"].n == pytest.approx(0.5**2.5)
    assert lg.counted["champion"] == [1.0, 1.0]  # tallies never decay


def test_decay_never_runs_backwards() -> None:
    lg, _ = ledger(decay=0.5, decay_interval_s=10.0)
    feed = Feed(lg)
    feed.decide("e1", "champion", T0)
    feed.reward(fb("e1", 1.0), T0)
    lg.expire(T0 + 10)
    lg.expire(T0 + 5)
    assert lg.evidence["champion"].n == pytest.approx(0.5)
    assert lg.as_of == T0 + 10


def test_new_evidence_is_not_decayed_for_time_before_it() -> None:
    lg, _ = ledger(decay=0.5, decay_interval_s=10.0)
    feed = Feed(lg)
    feed.decide("e1", "champion", T0)
    feed.reward(fb("e1", 1.0), T0)
    feed.decide("e2", "challenger", T0 + 15)
    feed.reward(fb("e2", 1.0), T0 + 20)
    assert lg.evidence["champion"].n == pytest.approx(0.25)
    assert lg.evidence["challenger"].n == pytest.approx(1.0)


def test_without_decay_evidence_stays() -> None:
    lg, _ = ledger(decay=1.0)
    feed = Feed(lg)
    feed.decide("e1", "champion", T0)
    feed.reward(fb("e1", 1.0), T0)
    lg.expire(T0 + 86_400)
    assert lg.evidence["champion"] == Evidence(1.0, 1.0, 1.0)


def test_evidence_at_ages_a_checkpoint_like_the_ledger() -> None:
    s = settings(decay=0.5, decay_interval_s=10.0)
    lg = Ledger(s)
    feed = Feed(lg)
    feed.decide("e1", "champion", T0)
    feed.reward(fb("e1", 1.0), T0)
    feed.decide("e2", "challenger", T0 + 1)
    feed.reward(fb("e2", 0.5), T0 + 2)
    cp = lg.checkpoint(T0 + 2)
    aged = evidence_at(cp, T0 + 12, s)
    assert aged["champion"].n == pytest.approx(cp.evidence["champion"].n / 2)
    assert aged["challenger"].total == pytest.approx(0.25)
    lg.expire(T0 + 12)
    for name in VARIANTS:
        assert aged[name].n == pytest.approx(lg.evidence[name].n)
        assert aged[name].total == pytest.approx(lg.evidence[name].total)
        assert aged[name].squares == pytest.approx(lg.evidence[name].squares)
    restored = Ledger(s, cp)
    restored.expire(T0 + 12)
    assert restored.evidence == pytest.approx(lg.evidence)
    # Asking for an earlier time, or without decay, leaves the checkpoint as it is.
    assert evidence_at(cp, T0, s) == cp.evidence
    assert evidence_at(cp, T0 + 100, settings(decay=1.0)) == cp.evidence


# -- checkpoints ---------------------------------------------------------------------------------


def test_checkpoint_round_trips_through_json() -> None:
    lg, _ = ledger(default_reward=0.0, reward="continuous")
    feed = Feed(lg)
    feed.decide("e1", "champion", T0)
    feed.reward(fb("e1", 2.5), T0 + 1)
    feed.decide("e2", "canary", T0 + 2)
    feed.reward(fb("ghost", 1.0), T0 + 2)
    feed.reward("junk", T0 + 3)
    cp = lg.checkpoint(T0 + 2 + WINDOW)
    assert cp.lake_offset == 2 and cp.feedback_offset == 3
    assert cp.as_of == T0 + 2 + WINDOW
    assert cp.results == {"joined": 1, "defaulted": 1, "unknown": 1, "invalid": 1}
    assert cp.counted["champion"] == [1.0, 2.5]
    text = json.dumps(cp.to_dict())
    back = Checkpoint.from_dict(json.loads(text))
    assert back == cp
    assert back.to_dict() == cp.to_dict()
    restored = Ledger(lg.settings, back)
    assert restored.evidence == lg.evidence
    assert restored.counted == lg.counted
    assert restored.results == lg.results
    assert (restored.lake_offset, restored.feedback_offset) == (2, 3)


def test_checkpoint_is_a_copy() -> None:
    lg, _ = ledger()
    feed = Feed(lg)
    feed.decide("e1", "champion", T0)
    cp = lg.checkpoint(T0 + 1)
    feed.reward(fb("e1", 1.0), T0 + 2)
    assert cp.counted["champion"] == [0.0, 0.0]
    assert cp.results == {}
    assert cp.evidence["champion"] == Evidence()


def test_checkpoint_from_an_older_dict_without_tallies() -> None:
    cp = Checkpoint.from_dict(
        {"lake_offset": 5, "feedback_offset": 7, "as_of": T0, "evidence": {"champion": [2, 1, 1]}}
    )
    assert cp.counted == {} and cp.results == {}
    lg = Ledger(settings(), cp)
    assert lg.evidence["champion"] == Evidence(2.0, 1.0, 1.0)
    assert lg.evidence["canary"] == Evidence()
    assert lg.counted["champion"] == [0.0, 0.0]


def test_checkpoint_closes_windows_first() -> None:
    lg, rec = ledger(default_reward=1.0)
    Feed(lg).decide("e1", "champion", T0)
    cp = lg.checkpoint(T0 + WINDOW)
    assert rec.calls == [("champion", Result.DEFAULTED, 1.0)]
    assert cp.results == {"defaulted": 1}
    assert cp.evidence["champion"] == Evidence(1.0, 1.0, 1.0)


# -- packing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [0, 1, MAX_VARIANTS - 1])
@pytest.mark.parametrize("propensity", [0.0, 0.02, 1 / 3, 0.5, 1.0])
@pytest.mark.parametrize("t", [T0, T0 + 0.01, T0 + 123.45, 4_102_444_800.99])
@pytest.mark.parametrize("flag", [False, True])
def test_pack_round_trip(variant: int, propensity: float, t: float, flag: bool) -> None:
    v, p, back, f = _unpack(_pack(variant, propensity, t, flag))
    assert (v, f) == (variant, flag)
    assert p == pytest.approx(propensity, abs=1e-4)
    assert t - TIME_RESOLUTION_S - 1e-6 <= back <= t + 1e-6


def test_pack_clamps_the_propensity() -> None:
    assert _unpack(_pack(3, 1.7, T0, False))[1] == 1.0
    assert _unpack(_pack(3, -0.2, T0, False))[1] == 0.0


# -- memory --------------------------------------------------------------------------------------


def test_memory_per_pending_decision() -> None:
    n = 100_000
    lg = Ledger(settings(window_s=600.0))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):  # the ids are made here: the ledger keeps them
            lg.decision(f"card-{i:08d}", VARIANTS[i % 3], 0.5, T0 + i * 0.001, i)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(lg.pending) == n
    per_decision = (after - before) / n
    print(f"\nbytes per pending decision: {per_decision:.1f}")
    assert per_decision < 250


# -- recovery ------------------------------------------------------------------------------------

Kind = Literal["lake", "feedback"]


@dataclass(frozen=True)
class Rec:
    """One record of the lake or feedback topic (offsets per topic, t = its timestamp)."""

    kind: Kind
    offset: int
    t: float
    event_id: str
    variant: str
    raw: Any = None


def make_stream(seed: int, n: int = 300) -> list[Rec]:
    """Decisions every 0.5 s for n decisions and their rewards, with everything that can
    happen: rewards before the lake record (its write lags), late, twice, for ids never
    served, echoing the variant, invalid; lake records repeated (at-least-once)."""
    rnd = random.Random(seed)
    lake: list[tuple[float, str, str]] = []
    feedback: list[tuple[float, Any]] = []
    for i in range(n):
        t = T0 + i * 0.5
        event_id = f"card-{i:08d}"
        variant = rnd.choice(VARIANTS)
        lake.append((t, event_id, variant))
        if rnd.random() < 0.05:  # the same record again, a little later
            lake.append((t + rnd.uniform(0.0, 2.0), event_id, variant))
        if rnd.random() < 0.75:
            arrives = t + rnd.uniform(-3.0, 1.3 * WINDOW)  # some early, some late
            raw: dict[str, Any] = {"id": event_id, "reward": float(rnd.random() < 0.4)}
            if rnd.random() < 0.1:
                raw["variant"] = variant
            feedback.append((arrives, raw))
            if rnd.random() < 0.1:
                feedback.append((arrives + rnd.uniform(0.0, WINDOW), {"id": event_id, "reward": 1}))
    for j in range(n // 15):
        feedback.append((T0 + rnd.uniform(0.0, n * 0.5), {"id": f"ghost-{j}", "reward": 1.0}))
    for j in range(n // 30):
        feedback.append((T0 + rnd.uniform(0.0, n * 0.5), {"id": f"card-{j:08d}", "reward": "?"}))
    lake.sort(key=lambda r: r[0])
    feedback.sort(key=lambda r: r[0])
    records = [Rec("lake", o, t, eid, v) for o, (t, eid, v) in enumerate(lake)]
    records += [
        Rec("feedback", o, t, str(raw.get("id")), "", raw) for o, (t, raw) in enumerate(feedback)
    ]
    records.sort(key=lambda r: (r.t, r.kind))
    return records


def apply(target: Ledger, record: Rec) -> None:
    if record.kind == "lake":
        target.decision(record.event_id, record.variant, 0.5, record.t, record.offset)
    else:
        target.feedback(record.raw, record.t, record.offset)


def run_live(target: Ledger, records: Iterable[Rec]) -> None:
    """Records as they come, windows closed as (record) time passes."""
    for record in records:
        target.expire(record.t)
        apply(target, record)


def interleave(lake: Sequence[Rec], feedback: Sequence[Rec], how: str, seed: int) -> list[Rec]:
    """Both topics' replayed records merged as a consumer might return them (each topic in
    order, the two in any order)."""
    if how == "as_read":
        return sorted([*lake, *feedback], key=lambda r: (r.t, r.kind))
    if how == "feedback_first":
        return [*feedback, *lake]
    if how == "lake_first":
        return [*lake, *feedback]
    rnd = random.Random(seed)
    out: list[Rec] = []
    i = j = 0
    while i < len(lake) or j < len(feedback):
        if j >= len(feedback) or (i < len(lake) and rnd.random() < 0.5):
            out.append(lake[i])
            i += 1
        else:
            out.append(feedback[j])
            j += 1
    return out


COMPARED = ("joined", "defaulted", "expired", "invalid", "evicted")


def totals(target: Ledger) -> tuple[dict[str, list[float]], dict[str, int]]:
    return target.counted, {key: target.results[key] for key in COMPARED}


def recover(
    records: Sequence[Rec],
    crash_at: int,
    how: str,
    s: LedgerSettings,
    seed: int,
    replay_windows: float,
) -> Ledger:
    """Ledger A reads `records[:crash_at]`, checkpoints, reads a few more, dies. Ledger B
    starts from A's checkpoint (through JSON), re-reads both topics from `replay_windows`
    windows before it in the order `how`, then goes on live."""
    a = Ledger(s)
    run_live(a, records[:crash_at])
    now = (records[crash_at - 1].t + records[crash_at].t) / 2
    cp = Checkpoint.from_dict(json.loads(json.dumps(a.checkpoint(now).to_dict())))
    run_live(a, records[crash_at : crash_at + 20])  # work lost with A
    b = Ledger(s, cp)
    start = cp.as_of - replay_windows * s.window_s
    old_lake = [
        r for r in records if r.kind == "lake" and start <= r.t and r.offset < cp.lake_offset
    ]
    old_feedback = [
        r
        for r in records
        if r.kind == "feedback" and start <= r.t and r.offset < cp.feedback_offset
    ]
    for record in interleave(old_lake, old_feedback, how, seed):
        apply(b, record)
    assert (b.lake_offset, b.feedback_offset) == (cp.lake_offset, cp.feedback_offset)
    run_live(
        b,
        [
            r
            for r in records
            if r.offset >= (cp.lake_offset if r.kind == "lake" else cp.feedback_offset)
        ],
    )
    return b


INTERLEAVINGS = ["as_read", "feedback_first", "lake_first", "shuffled"]
CRASH_POINTS = [0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95]


@pytest.mark.parametrize("default", [None, 0.0])
@pytest.mark.parametrize("how", INTERLEAVINGS)
@pytest.mark.parametrize("crash", CRASH_POINTS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_recovery_counts_like_an_uninterrupted_run(
    seed: int, crash: float, how: str, default: float | None
) -> None:
    """Nothing doubled or lost: a restarted ledger ends with the totals of one that never
    stopped. The replay starts two windows back: one for decisions still pending at the
    checkpoint, one more for rewards that waited for their lake record (and for repeated
    lake records) - see the xfail test below for one window."""
    s = settings(default_reward=default)
    records = make_stream(seed)
    end = records[-1].t + 3 * WINDOW
    c = Ledger(s)
    run_live(c, records)
    c.expire(end)
    b = recover(records, int(len(records) * crash), how, s, seed, replay_windows=2.0)
    b.expire(end)
    assert c.results["joined"] > 100 and c.results["defaulted" if default == 0.0 else "expired"]
    assert totals(b) == totals(c)
    for name in VARIANTS:
        assert b.evidence[name] == pytest.approx(c.evidence[name])


@pytest.mark.parametrize("default", [None, 0.0])
def test_on_count_and_results_agree_on_a_busy_stream(default: float | None) -> None:
    lg, rec = ledger(default_reward=default, max_pending=40)
    records = make_stream(7)
    run_live(lg, records)
    lg.expire(records[-1].t + 3 * WINDOW)
    assert rec.results() == lg.results
    assert set(lg.results) == {
        "joined",
        "defaulted" if default == 0.0 else "expired",
        "late",
        "duplicate",
        "unknown",
        "invalid",
        "evicted",
    }
    for name in VARIANTS:
        rewards = [r for v, _, r in rec.calls if v == name and r is not None]
        assert lg.counted[name] == [float(len(rewards)), pytest.approx(sum(rewards))]
        assert lg.evidence[name].n == len(rewards)
    assert lg.pending == {} and lg.waiting == {}


def test_recovery_from_a_checkpoint_of_nothing() -> None:
    s = settings(default_reward=0.0)
    records = make_stream(4, n=60)
    c = Ledger(s)
    run_live(c, records)
    c.expire(records[-1].t + 3 * WINDOW)
    b = Ledger(s, Checkpoint.from_dict(json.loads(json.dumps(Ledger(s).checkpoint(0.0).to_dict()))))
    run_live(b, records)
    b.expire(records[-1].t + 3 * WINDOW)
    assert totals(b) == totals(c)


def test_recovery_with_decay_matches() -> None:
    s = settings(default_reward=0.0, decay=0.9, decay_interval_s=5.0)
    records = make_stream(5)
    end = records[-1].t + 3 * WINDOW
    c = Ledger(s)
    run_live(c, records)
    c.expire(end)
    b = recover(records, len(records) // 2, "as_read", s, 5, replay_windows=2.0)
    b.expire(end)
    assert totals(b) == totals(c)
    for name in VARIANTS:
        assert b.evidence[name].n == pytest.approx(c.evidence[name].n, rel=1e-9)
        assert b.evidence[name].total == pytest.approx(c.evidence[name].total, rel=1e-9)


def test_replayed_records_alone_count_nothing() -> None:
    s = settings(default_reward=0.0)
    records = make_stream(6, n=120)
    a = Ledger(s)
    run_live(a, records)
    cp = a.checkpoint(records[-1].t)
    b = Ledger(s, cp, on_count=(rec := Recorder()))
    for record in interleave(
        [r for r in records if r.kind == "lake"],
        [r for r in records if r.kind == "feedback"],
        "feedback_first",
        6,
    ):
        apply(b, record)
    b.expire(cp.as_of)
    assert rec.calls == []
    assert totals(b) == totals(a)


def test_replayed_decision_rewarded_anew_counts_once() -> None:
    # Pending at the checkpoint, replayed, then its reward arrives: counted by B alone.
    s = settings(default_reward=0.0)
    a = Ledger(s)
    a.decision("e1", "champion", 0.5, T0, 0)
    cp = a.checkpoint(T0 + 5)
    b = Ledger(s, cp, on_count=(rec := Recorder()))
    b.decision("e1", "champion", 0.5, T0, 0)
    assert b.feedback(fb("e1", 1.0), T0 + 6, 0) is Result.JOINED
    b.expire(T0 + 3 * WINDOW)
    assert rec.calls == [("champion", Result.JOINED, 1.0)]


def test_replayed_decision_closed_before_the_checkpoint_counts_nothing() -> None:
    s = settings(default_reward=0.0)
    a = Ledger(s)
    a.decision("e1", "champion", 0.5, T0, 0)
    cp = a.checkpoint(T0 + WINDOW + 1)
    assert cp.results == {"defaulted": 1}
    b = Ledger(s, cp, on_count=(rec := Recorder()))
    b.decision("e1", "champion", 0.5, T0, 0)
    b.expire(T0 + 3 * WINDOW)
    assert rec.calls == []
    assert b.results == Counter({"defaulted": 1})


def two_window_recovery(records: Sequence[Rec], checkpoint_at: float) -> tuple[Ledger, Ledger]:
    """(C: read everything once, B: restarted at `checkpoint_at` with two windows replayed,
    as the controller does)."""
    s = settings(default_reward=0.0)
    ordered = sorted(records, key=lambda r: (r.t, r.kind))
    crash_at = sum(1 for r in ordered if r.t < checkpoint_at)
    end = ordered[-1].t + 3 * WINDOW
    c = Ledger(s)
    run_live(c, ordered)
    c.expire(end)
    a = Ledger(s)
    run_live(a, ordered[:crash_at])
    cp = a.checkpoint(checkpoint_at)
    b = Ledger(s, cp)
    start = cp.as_of - 2 * WINDOW
    for record in ordered[:crash_at]:
        if record.t >= start:
            apply(b, record)
    run_live(b, ordered[crash_at:])
    b.expire(end)
    return c, b


@pytest.mark.parametrize("case", ["reward_before_lake_record", "repeated_lake_record"])
def test_replay_counts_each_decision_once_across_the_window_edge(case: str) -> None:
    tc = T0 + 100.0  # checkpoint; one window back is T0 + 70, the edge these cases straddle
    if case == "reward_before_lake_record":
        # The reward (T0 + 69) came before the lake record (T0 + 71): joined by A.
        records = [
            Rec("feedback", 0, T0 + 69, "e1", "", fb("e1", 1.0)),
            Rec("lake", 0, T0 + 71, "e1", "champion"),
        ]
    else:
        # Decided at T0 + 69 and defaulted at T0 + 99 by A; its repeat (T0 + 71, another
        # timestamp: the agent re-sent it) is replayed alone and defaulted again by B.
        records = [
            Rec("lake", 0, T0 + 69, "e1", "champion"),
            Rec("lake", 1, T0 + 71, "e1", "champion"),
        ]
    c, b = two_window_recovery(records, tc)
    assert totals(b) == totals(c)


def test_expire_during_replay_does_not_default_a_decision_joined_before_the_checkpoint() -> None:
    s = settings(default_reward=0.0)
    a = Ledger(s)
    a.decision("e1", "champion", 0.5, T0, 0)
    a.feedback(fb("e1", 1.0), T0 + 5, 0)
    cp = a.checkpoint(T0 + 10)
    assert cp.results == {"joined": 1}
    b = Ledger(s, cp)
    b.decision("e1", "champion", 0.5, T0, 0)  # the lake is re-read first
    b.expire(T0 + WINDOW + 5)  # restarted 25 s after the checkpoint, still catching up
    b.feedback(fb("e1", 1.0), T0 + 5, 0)  # then the feedback
    b.expire(T0 + 3 * WINDOW)
    assert b.results == Counter({"joined": 1})
    assert b.counted["champion"] == [1.0, 1.0]


def test_reward_waiting_at_the_checkpoint_counts_unknown_once_after_a_restart() -> None:
    s = settings()
    a = Ledger(s)
    a.feedback(fb("ghost", 1.0), T0, 0)
    cp = a.checkpoint(T0 + 10)
    assert cp.results == {}
    b = Ledger(s, cp)
    b.feedback(fb("ghost", 1.0), T0, 0)
    b.expire(T0 + 3 * WINDOW)
    assert b.results == Counter({"unknown": 1})


def test_second_reward_after_a_restart_is_still_a_duplicate() -> None:
    s = settings(default_reward=0.0)
    a = Ledger(s)
    a.decision("e1", "champion", 0.5, T0, 0)
    a.feedback(fb("e1", 1.0), T0 + 5, 0)
    cp = a.checkpoint(T0 + WINDOW + 1)
    b = Ledger(s, cp)
    b.decision("e1", "champion", 0.5, T0, 0)
    b.feedback(fb("e1", 1.0), T0 + 5, 0)
    assert b.feedback(fb("e1", 0.0), T0 + WINDOW + 2, 1) is Result.DUPLICATE


def test_a_reward_reread_before_its_long_closed_decision_is_not_counted_again() -> None:
    s = settings(default_reward=0.0)
    a = Ledger(s)
    a.decision("e1", "champion", 0.5, T0, 0)
    a.feedback(fb("e1", 1.0), T0 + 5, 0)
    cp = a.checkpoint(T0 + 3 * WINDOW)  # e1's window closed long before the checkpoint
    assert cp.results == {"joined": 1}
    b = Ledger(s, cp)
    b.feedback(fb("e1", 1.0), T0 + 5, 0)  # re-read first: it waits for its decision
    b.decision("e1", "champion", 0.5, T0, 0)  # re-read: closed before the checkpoint
    assert b.feedback(fb("e1", 0.0), T0 + 3 * WINDOW + 1, 1) is Result.DUPLICATE
    b.expire(T0 + 10 * WINDOW)
    assert b.results == Counter({"joined": 1, "duplicate": 1}) and b.waiting == {}
