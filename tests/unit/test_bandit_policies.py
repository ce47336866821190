"""Bandit policies: Thompson against exact posteriors, UCB1 and epsilon-greedy by hand, the
floor, and `weights` (order, floor, normalisation, seeding)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamer.bandit.policies import (
    THOMPSON_DRAWS,
    Evidence,
    Policy,
    Reward,
    epsilon_greedy,
    floored,
    thompson,
    ucb1,
    weights,
)

GRID = np.linspace(0.0, 1.0, 200_001)


def rng(seed: int = 7) -> np.random.Generator:
    return np.random.default_rng(seed)


def binary(successes: float, failures: float) -> Evidence:
    """Evidence of `successes` rewards of 1 and `failures` rewards of 0."""
    return Evidence(successes + failures, successes, successes)


def beta_pdf(a: float, b: float) -> np.ndarray:
    """The Beta(a, b) density on GRID (a, b >= 1), from log-gamma: no scipy needed."""
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    x = np.clip(GRID, 1e-300, 1.0)
    y = np.clip(1.0 - GRID, 1e-300, 1.0)
    return np.asarray(np.exp(log_norm + (a - 1.0) * np.log(x) + (b - 1.0) * np.log(y)))


def beta_cdf(a: float, b: float) -> np.ndarray:
    """The Beta(a, b) distribution function on GRID by the cumulative trapezoid rule."""
    pdf = beta_pdf(a, b)
    steps = (pdf[1:] + pdf[:-1]) / 2.0 * np.diff(GRID)
    return np.concatenate([[0.0], np.cumsum(steps)])


def p_best_exact(arms: list[tuple[float, float]]) -> list[float]:
    """P(arm i's Beta(1 + s, 1 + f) draw is the largest) = integral of f_i * prod_j F_j,
    by numerical integration over GRID."""
    params = [(1.0 + s, 1.0 + f) for s, f in arms]
    pdfs = [beta_pdf(a, b) for a, b in params]
    cdfs = [beta_cdf(a, b) for a, b in params]
    out = []
    for i, pdf in enumerate(pdfs):
        integrand = pdf.copy()
        for j, cdf in enumerate(cdfs):
            if j != i:
                integrand = integrand * cdf
        out.append(float(np.trapezoid(integrand, GRID)))
    return out


def phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


# -- the numerical reference itself ------------------------------------------------------------


def test_reference_integration_is_exact_on_known_cases() -> None:
    # Beta(1,1) vs Beta(1,1): 1/2; Beta(2,1) vs Beta(1,1): P(X > Y) = 2/3 (E[X] of Beta(2,1)).
    assert p_best_exact([(0, 0), (0, 0)]) == pytest.approx([0.5, 0.5], abs=1e-6)
    assert p_best_exact([(1, 0), (0, 0)]) == pytest.approx([2 / 3, 1 / 3], abs=1e-6)
    assert sum(p_best_exact([(3, 5), (10, 2), (0, 1)])) == pytest.approx(1.0, abs=1e-6)


# -- Thompson, binary ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arms",
    [
        [(10, 10), (14, 6)],
        [(3, 7), (4, 6)],
        [(50, 50), (60, 40)],
        [(0, 0), (2, 0)],
        [(1, 9), (2, 8), (3, 7)],
        [(30, 70), (35, 65), (20, 80), (0, 0)],
    ],
)
def test_thompson_binary_matches_the_exact_posterior_probability_of_being_best(
    arms: list[tuple[float, float]],
) -> None:
    evidence = [binary(s, f) for s, f in arms]
    got = thompson(evidence, "binary", rng())
    assert got.shape == (len(arms),)
    assert got.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(got, p_best_exact(arms), atol=0.01)


def test_thompson_binary_counts_fractional_rewards() -> None:
    # Rewards in [0, 1]: 4 decisions earning 0.5 each are 2 successes and 2 failures.
    halves = Evidence(4.0, 2.0, 1.0)
    got = thompson([halves, binary(1, 3)], "binary", rng())
    np.testing.assert_allclose(got, p_best_exact([(2, 2), (1, 3)]), atol=0.01)


def test_thompson_binary_identical_evidence_is_an_even_split() -> None:
    got = thompson([binary(40, 60)] * 3, "binary", rng())
    np.testing.assert_allclose(got, [1 / 3] * 3, atol=0.015)


@pytest.mark.parametrize("reward", ["binary", "continuous"])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_thompson_without_evidence_is_uniform(reward: Reward, k: int) -> None:
    got = thompson([Evidence()] * k, reward, rng())
    np.testing.assert_allclose(got, np.full(k, 1.0 / k), atol=0.015)


def test_thompson_ties_do_not_favour_the_first_arm() -> None:
    # Beta(1, 1e6): every draw rounds to about the same tiny value; ties must spread.
    got = thompson([binary(0, 1e6), binary(0, 1e6)], "binary", rng())
    np.testing.assert_allclose(got, [0.5, 0.5], atol=0.02)


def test_thompson_uses_the_declared_number_of_draws() -> None:
    got = thompson([binary(3, 1), binary(1, 3)], "binary", rng())
    assert np.allclose(got * THOMPSON_DRAWS, np.round(got * THOMPSON_DRAWS))


# -- Thompson, continuous ----------------------------------------------------------------------


def gaussian(n: float, mean: float, var: float) -> Evidence:
    """Evidence of n rewards with this mean and (population) variance."""
    return Evidence(n, n * mean, n * (var + mean**2))


def test_thompson_continuous_matches_the_normal_posterior_by_hand() -> None:
    # a: 10 rewards, mean 1, variance 4; b: 10 rewards, mean 0.5, variance 4.
    # Pooled prior (worth one observation): mean 15/20 = 0.75.
    # Posterior means: (10*1 + 0.75)/11 and (10*0.5 + 0.75)/11; sd sqrt(4/11) each.
    # P(a best) = Phi((mean_a - mean_b) / sqrt(8/11)).
    expected = phi(((10.75 - 5.75) / 11.0) / math.sqrt(8.0 / 11.0))
    assert expected == pytest.approx(0.703, abs=0.002)
    got = thompson([gaussian(10, 1.0, 4.0), gaussian(10, 0.5, 4.0)], "continuous", rng())
    assert got[0] == pytest.approx(expected, abs=0.01)
    assert got[1] == pytest.approx(1.0 - expected, abs=0.01)


def test_thompson_continuous_prefers_the_higher_mean() -> None:
    got = thompson(
        [gaussian(200, 10.0, 9.0), gaussian(200, 12.0, 9.0), gaussian(200, 11.0, 9.0)],
        "continuous",
        rng(),
    )
    assert int(np.argmax(got)) == 1
    assert got[1] > 0.99


def test_thompson_continuous_equal_means_split_evenly() -> None:
    got = thompson([gaussian(50, -3.0, 2.0), gaussian(50, -3.0, 2.0)], "continuous", rng())
    np.testing.assert_allclose(got, [0.5, 0.5], atol=0.015)


def test_thompson_continuous_works_with_negative_and_large_rewards() -> None:
    got = thompson([gaussian(30, -1e6, 1e10), gaussian(30, 5e5, 1e10)], "continuous", rng())
    assert np.isfinite(got).all()
    assert got[1] > got[0]


def test_thompson_continuous_arm_without_evidence_follows_the_pooled_data() -> None:
    # The empty arm is as likely as the pooled mean says: between the two others.
    got = thompson(
        [gaussian(100, 0.0, 1.0), gaussian(100, 1.0, 1.0), Evidence()], "continuous", rng()
    )
    assert got[1] > got[2] > got[0]
    assert got[2] > 0.05


# -- UCB1 ----------------------------------------------------------------------------------------


def test_ucb1_formula_picks_the_less_explored_arm_over_the_higher_mean() -> None:
    a = binary(60, 40)  # mean 0.6, n 100
    b = binary(2.5, 2.5)  # mean 0.5, n 5
    ln_n = math.log(105.0)
    bound_a = 0.6 + math.sqrt(2.0 * ln_n / 100.0)
    bound_b = 0.5 + math.sqrt(2.0 * ln_n / 5.0)
    assert bound_a == pytest.approx(0.905, abs=0.001)
    assert bound_b == pytest.approx(1.864, abs=0.001)
    assert a.mean > b.mean and bound_b > bound_a
    np.testing.assert_array_equal(ucb1([a, b], "binary"), [0.0, 1.0])


def test_ucb1_picks_the_higher_mean_when_equally_explored() -> None:
    np.testing.assert_array_equal(
        ucb1([binary(10, 40), binary(45, 5), binary(20, 30)], "binary"), [0.0, 1.0, 0.0]
    )


def test_ucb1_first_gives_unexplored_arms_everything_shared_evenly() -> None:
    got = ucb1([binary(99, 1), Evidence(), binary(1, 99), Evidence()], "binary")
    np.testing.assert_array_equal(got, [0.0, 0.5, 0.0, 0.5])


def test_ucb1_continuous_scales_the_bonus_by_the_pooled_deviation() -> None:
    # a: 100 rewards of exactly 10; b: 4 rewards of exactly 9. Pooled sd ~0.19, so a's
    # higher mean wins; with the [0, 1] bonus (c = 1) b's larger bonus would have won.
    a, b = gaussian(100, 10.0, 0.0), gaussian(4, 9.0, 0.0)
    ln_n = math.log(104.0)
    pooled_mean = (1000.0 + 36.0) / 104.0
    sd = math.sqrt((10_000.0 + 324.0) / 104.0 - pooled_mean**2)
    assert 10.0 + sd * math.sqrt(2 * ln_n / 100) > 9.0 + sd * math.sqrt(2 * ln_n / 4)
    assert 10.0 + math.sqrt(2 * ln_n / 100) < 9.0 + math.sqrt(2 * ln_n / 4)
    np.testing.assert_array_equal(ucb1([a, b], "continuous"), [1.0, 0.0])


def test_ucb1_tie_goes_to_the_first() -> None:
    np.testing.assert_array_equal(ucb1([binary(5, 5), binary(5, 5)], "binary"), [1.0, 0.0])


# -- epsilon-greedy --------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.3, 1.0])
def test_epsilon_greedy_gives_the_best_one_minus_epsilon_plus_its_share(epsilon: float) -> None:
    k = 3
    got = epsilon_greedy([binary(1, 9), binary(7, 3), binary(5, 5)], epsilon, rng())
    expected = [epsilon / k, 1.0 - epsilon + epsilon / k, epsilon / k]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert got.sum() == pytest.approx(1.0, abs=1e-12)


def test_epsilon_greedy_explores_unexplored_arms_evenly_first() -> None:
    got = epsilon_greedy([binary(9, 1), Evidence(), binary(1, 9)], 0.1, rng())
    np.testing.assert_allclose(got, [1 / 3] * 3)


def test_epsilon_greedy_breaks_ties_at_random() -> None:
    generator = rng()
    winners = {
        int(np.argmax(epsilon_greedy([binary(5, 5), binary(5, 5)], 0.1, generator)))
        for _ in range(50)
    }
    assert winners == {0, 1}


# -- floored -------------------------------------------------------------------------------------


@pytest.mark.parametrize("min_weight", [0.0, 0.01, 0.02, 0.1, 0.2, 0.24])
@pytest.mark.parametrize("seed", range(5))
def test_floored_keeps_every_weight_above_the_floor_and_sums_to_one(
    min_weight: float, seed: int
) -> None:
    generator = rng(seed)
    raw = generator.random(4) * (generator.random(4) < 0.6)  # some exact zeros
    got = floored(raw, min_weight)
    assert (got >= min_weight - 1e-12).all()
    assert got.sum() == pytest.approx(1.0, abs=1e-12)
    if raw.sum() > 0:  # the rest is shared as raw says: order preserved
        assert (np.argsort(got, kind="stable") == np.argsort(raw, kind="stable")).all()


def test_floored_shares_the_rest_in_proportion() -> None:
    got = floored(np.array([1.0, 0.0, 3.0]), 0.1)
    np.testing.assert_allclose(got, [0.1 + 0.7 * 0.25, 0.1, 0.1 + 0.7 * 0.75])


@pytest.mark.parametrize(("k", "min_weight"), [(4, 0.25), (4, 0.3), (2, 0.5), (10, 0.1)])
def test_floored_is_uniform_when_the_floors_use_everything(k: int, min_weight: float) -> None:
    raw = np.zeros(k)
    raw[0] = 1.0
    np.testing.assert_allclose(floored(raw, min_weight), np.full(k, 1.0 / k))


def test_floored_all_zero_is_uniform() -> None:
    np.testing.assert_allclose(floored(np.zeros(3), 0.05), [1 / 3] * 3)


# -- weights -------------------------------------------------------------------------------------

NAMES = ["champion", "challenger", "zeta", "alpha"]
EVIDENCE = {
    "champion": binary(300, 700),
    "challenger": binary(40, 60),
    "zeta": binary(1, 2),
    "alpha": Evidence(),
}
POLICIES: list[Policy] = ["thompson", "ucb1", "epsilon_greedy"]


@pytest.mark.parametrize("reward", ["binary", "continuous"])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("min_weight", [0.0, 0.02, 0.2])
def test_weights_names_in_order_floored_and_normalised(
    policy: Policy, reward: Reward, min_weight: float
) -> None:
    got = weights(policy, EVIDENCE, reward=reward, min_weight=min_weight, epsilon=0.1, rng=rng())
    assert list(got) == NAMES
    assert all(isinstance(w, float) for w in got.values())
    assert min(got.values()) >= min_weight - 1e-12
    assert sum(got.values()) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize(
    ("policy", "raw_worst"), [("thompson", 0.0), ("ucb1", 0.0), ("epsilon_greedy", 0.1 / 3)]
)
def test_weights_follow_the_policy(policy: Policy, raw_worst: float) -> None:
    evidence = {"a": binary(10, 90), "b": binary(90, 10), "c": binary(20, 80)}
    got = weights(policy, evidence, reward="binary", min_weight=0.05, epsilon=0.1, rng=rng())
    assert max(got, key=lambda name: got[name]) == "b"
    assert got["a"] == pytest.approx(0.05 + 0.85 * raw_worst, abs=1e-6)


def test_weights_thompson_floors_the_posterior() -> None:
    evidence = {"a": binary(10, 10), "b": binary(14, 6)}
    got = weights("thompson", evidence, reward="binary", min_weight=0.1, epsilon=0.0, rng=rng())
    exact = p_best_exact([(10, 10), (14, 6)])
    assert got["a"] == pytest.approx(0.1 + 0.8 * exact[0], abs=0.01)
    assert got["b"] == pytest.approx(0.1 + 0.8 * exact[1], abs=0.01)


@pytest.mark.parametrize("reward", ["binary", "continuous"])
@pytest.mark.parametrize("policy", POLICIES)
def test_weights_same_seed_same_weights(policy: Policy, reward: Reward) -> None:
    evidence = {"a": binary(5, 5), "b": binary(5, 5), "c": binary(6, 4)}

    def once(seed: int) -> dict[str, float]:
        return weights(policy, evidence, reward=reward, min_weight=0.02, epsilon=0.2, rng=rng(seed))

    assert once(11) == once(11)


def test_weights_thompson_draws_depend_on_the_seed() -> None:
    evidence = {"a": binary(5, 5), "b": binary(5, 5)}
    first, second = (
        weights("thompson", evidence, reward="binary", min_weight=0.0, epsilon=0.0, rng=rng(s))
        for s in (1, 2)
    )
    assert first != second  # the seed matters (so `seed` is what makes runs reproducible)


def test_weights_of_nothing_is_empty() -> None:
    assert weights("thompson", {}, reward="binary", min_weight=0.02, epsilon=0.1, rng=rng()) == {}


def test_weights_single_variant_gets_everything() -> None:
    for policy in POLICIES:
        got = weights(
            policy, {"only": binary(1, 1)}, reward="binary", min_weight=0.3, epsilon=0.1, rng=rng()
        )
        assert got == {"only": pytest.approx(1.0)}


# -- Evidence ------------------------------------------------------------------------------------


def test_evidence_mean_plus_and_scaled() -> None:
    e = Evidence(4.0, 3.0, 2.5)
    assert e.mean == 0.75
    assert Evidence().mean == 0.0
    assert Evidence(0.0, 1.0, 1.0).mean == 0.0
    assert e.plus(Evidence(1.0, 1.0, 1.0)) == Evidence(5.0, 4.0, 3.5)
    assert e.plus(Evidence()) == e
    assert e.scaled(0.5) == Evidence(2.0, 1.5, 1.25)
    assert e.scaled(0.5).mean == e.mean  # decay ages the amount of evidence, not its mean
    assert e.scaled(1.0) == e
    assert e == Evidence(4.0, 3.0, 2.5)  # frozen, unchanged by plus/scaled
