"""Bandit policies: evidence per variant in, traffic weights out. Pure numpy, no Kafka.

Each policy turns the (possibly decayed) evidence of the enabled served variants into
weights that sum to 1; `floored` then gives every variant at least `min_weight`, so none
stops being explored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

Policy = Literal["thompson", "ucb1", "epsilon_greedy"]
Reward = Literal["binary", "continuous"]
THOMPSON_DRAWS = 20_000
"""Monte-Carlo draws per Thompson update: P(best) to about +-0.004 (one standard error)."""


@dataclass(frozen=True)
class Evidence:
    """What a variant has earned: rewarded decisions, and the sum and sum of squares of
    their rewards (all multiplied by the decay since they were counted)."""

    n: float = 0.0
    total: float = 0.0
    squares: float = 0.0

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n > 0 else 0.0

    def plus(self, other: Evidence) -> Evidence:
        return Evidence(self.n + other.n, self.total + other.total, self.squares + other.squares)

    def scaled(self, factor: float) -> Evidence:
        return Evidence(self.n * factor, self.total * factor, self.squares * factor)


def weights(
    policy: Policy,
    evidence: Mapping[str, Evidence],
    *,
    reward: Reward,
    min_weight: float,
    epsilon: float,
    rng: np.random.Generator,
) -> dict[str, float]:
    """The policy's weights over the variants of `evidence`, floored at `min_weight`."""
    names = list(evidence)
    if not names:
        return {}
    arms = [evidence[n] for n in names]
    if policy == "thompson":
        raw = thompson(arms, reward, rng)
    elif policy == "ucb1":
        raw = ucb1(arms, reward)
    else:
        raw = epsilon_greedy(arms, epsilon, rng)
    return dict(zip(names, floored(raw, min_weight).tolist(), strict=True))


def thompson(arms: list[Evidence], reward: Reward, rng: np.random.Generator) -> np.ndarray:
    """The posterior probability that each arm is the best, by Monte Carlo.

    binary: Beta(1 + successes, 1 + failures) per arm (rewards in [0, 1] count
    fractionally). continuous: a normal posterior of each arm's mean with an empirical
    prior (the pooled mean and variance of all arms, worth one observation), so an arm
    without evidence is as likely as the pooled data says.
    """
    n = np.array([a.n for a in arms])
    total = np.array([a.total for a in arms])
    k = len(arms)
    if reward == "binary":
        successes = np.clip(total, 0.0, n)
        draws = rng.beta(1.0 + successes, 1.0 + n - successes, size=(THOMPSON_DRAWS, k))
    else:
        squares = np.array([a.squares for a in arms])
        pooled_n = n.sum()
        prior_mean = total.sum() / pooled_n if pooled_n > 0 else 0.0
        prior_var = max(squares.sum() / pooled_n - prior_mean**2, 0.0) if pooled_n > 0 else 1.0
        prior_var = prior_var or 1.0
        means = np.where(n > 0, total / np.maximum(n, 1e-12), prior_mean)
        var = np.where(n > 1, np.maximum(squares / np.maximum(n, 1e-12) - means**2, 0.0), 0.0)
        var = np.where(var > 0, var, prior_var)
        post_mean = (means * n + prior_mean) / (n + 1.0)
        post_sd = np.sqrt(var / (n + 1.0))
        draws = rng.normal(post_mean, post_sd, size=(THOMPSON_DRAWS, k))
    # Ties (equal draws) go to a random arm, not always the first.
    jitter = rng.random((THOMPSON_DRAWS, k)) * 1e-12
    best = np.argmax(draws + jitter, axis=1)
    return np.bincount(best, minlength=k) / THOMPSON_DRAWS


def ucb1(arms: list[Evidence], reward: Reward) -> np.ndarray:
    """All traffic to the arm with the highest upper confidence bound, mean + c *
    sqrt(2 ln N / n) (c = 1 for rewards in [0, 1], else the pooled standard deviation);
    arms without evidence first, shared evenly."""
    n = np.array([a.n for a in arms])
    k = len(arms)
    unexplored = n <= 0
    if unexplored.any():
        return np.asarray(unexplored / unexplored.sum(), dtype=np.float64)
    means = np.array([a.mean for a in arms])
    scale = 1.0
    if reward == "continuous":
        squares = sum(a.squares for a in arms)
        pooled = sum(a.total for a in arms) / n.sum()
        scale = math.sqrt(max(squares / n.sum() - pooled**2, 0.0)) or 1.0
    bound = means + scale * np.sqrt(2.0 * math.log(max(n.sum(), 1.0)) / n)
    out = np.zeros(k)
    out[_argmax(bound)] = 1.0
    return out


def epsilon_greedy(arms: list[Evidence], epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """1 - epsilon to the best mean so far, epsilon spread over every arm; arms without
    evidence are explored evenly first."""
    n = np.array([a.n for a in arms])
    k = len(arms)
    if (n <= 0).any():
        return np.full(k, 1.0 / k)
    out = np.full(k, epsilon / k)
    means = np.array([a.mean for a in arms])
    best = np.flatnonzero(means == means.max())
    out[best[rng.integers(len(best))]] += 1.0 - epsilon
    return out


def floored(raw: np.ndarray, min_weight: float) -> np.ndarray:
    """Every weight at least `min_weight`, the rest shared as `raw` says; sums to 1."""
    k = len(raw)
    total = raw.sum()
    shares = raw / total if total > 0 else np.full(k, 1.0 / k)
    if k * min_weight >= 1.0:
        return np.full(k, 1.0 / k)
    return min_weight + (1.0 - k * min_weight) * shares


def _argmax(values: np.ndarray) -> int:
    return int(np.flatnonzero(values == values.max())[0])
