"""Synthetic but realistic card transactions for the fraud-scoring demo.

Generative process (all draws from one ``np.random.default_rng(seed)``, vectorized):

* arrivals: a Poisson stream, exponential gaps averaging ~120 ms, so ``ts`` strictly increases;
* ``amount``: log-normal with median ~40 and a long right tail, rounded to cents; 1.5 % of
  transactions are sub-2.00 "card testing" probes;
* ``age_days``: account age, exponential with mean ~13 months (~14 % are under 60 days);
* ``hour``: the cardholder's *local* hour (independent of ``ts``, which is UTC), with a daily
  cycle that peaks mid-afternoon and bottoms out around 4 am;
* ``merchant_risk``: Beta(2, 8) score of the merchant, mean 0.2;
* ``country``: issuing country, mostly domestic; it is not a model feature, so its small
  effect on fraud acts as irreducible noise.

The fraud label is Bernoulli(sigmoid(z)) where ``z`` is dominated by interactions - a large
amount on a new account, card-testing probes on a new account, night-time spending at a risky
merchant - plus N(0, 1) noise. None of these are linear in the raw features (``hour`` is even
cyclic), so a logistic regression scores clearly below a tree ensemble (holdout ROC AUC ~0.82
vs ~0.93 at 40k training rows). The fraud rate is ~2.6 %.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

FEATURES: tuple[str, ...] = ("amount", "age_days", "hour", "merchant_risk")
"""Model input columns, in the order of ``feature_matrix`` columns."""

DEFAULT_START_MS = 1_735_689_600_000
"""2025-01-01T00:00:00Z: a fixed default keeps generated events reproducible."""

_MEAN_GAP_MS = 120.0
_COUNTRIES = ("US", "GB", "DE", "FR", "NL", "ES", "CA", "BR", "IN", "NG")
_COUNTRY_WEIGHTS = np.array([0.55, 0.1, 0.08, 0.06, 0.04, 0.04, 0.05, 0.03, 0.03, 0.02])
# Log-odds offsets per country; unobserved by the models on purpose.
_COUNTRY_RISK = np.array([0.0, 0.0, -0.1, 0.0, -0.1, 0.1, 0.0, 0.4, 0.3, 0.6])
_HOUR_WEIGHTS = np.exp(0.6 * np.cos(2 * np.pi * (np.arange(24) - 15) / 24))


def _sigmoid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # tanh form: same function as 1 / (1 + exp(-x)) but cannot overflow for very negative x.
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def generate_dataset(
    n: int, seed: int = 7, start_ms: int | None = None
) -> tuple[list[dict[str, object]], npt.NDArray[np.int8]]:
    """Draw ``n`` transactions and their fraud labels (int8, 0/1), deterministic for ``seed``.

    Events match ``schemas/transaction.avsc``; ``start_ms`` (default 2025-01-01 UTC) is the
    timestamp of the first event.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    start = DEFAULT_START_MS if start_ms is None else start_ms

    # +1 keeps timestamps strictly increasing even when two events land in the same ms.
    gaps = 1 + np.floor(rng.exponential(_MEAN_GAP_MS, n)).astype(np.int64)
    ts = start + np.cumsum(gaps) - gaps[:1]  # first event lands exactly on ``start``

    amount = rng.lognormal(mean=np.log(40.0), sigma=1.1, size=n)
    probe = rng.random(n) < 0.015
    amount[probe] = rng.uniform(0.5, 2.0, probe.sum())
    amount = np.clip(amount, 0.5, 25_000.0).round(2)

    age_days = np.round(rng.exponential(400.0, n), 1)
    hour = rng.choice(24, size=n, p=_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum())
    merchant_risk = np.round(rng.beta(2.0, 8.0, n), 4)
    country_idx = rng.choice(len(_COUNTRIES), size=n, p=_COUNTRY_WEIGHTS)

    # Soft thresholds rather than hard ones so the decision surface is learnable but not trivial.
    new_account = _sigmoid((60.0 - age_days) / 12.0)
    big = _sigmoid((np.log(amount) - np.log(150.0)) / 0.25)
    tiny = (amount < 2.0).astype(np.float64)
    night = ((hour <= 5) | (hour >= 23)).astype(np.float64)
    risky = _sigmoid((merchant_risk - 0.25) / 0.04)
    z = (
        -6.8
        + 7.0 * new_account * big
        + 7.0 * new_account * tiny
        + 6.0 * night * risky
        + 0.8 * risky
        + 0.5 * big
        + _COUNTRY_RISK[country_idx]
        + rng.normal(0.0, 1.0, n)
    )
    labels = (rng.random(n) < _sigmoid(z)).astype(np.int8)

    # .tolist() yields plain Python scalars, which Avro/JSON encoders accept without coercion.
    columns = zip(
        ts.tolist(),
        amount.tolist(),
        age_days.tolist(),
        hour.tolist(),
        merchant_risk.tolist(),
        country_idx.tolist(),
        strict=True,
    )
    events: list[dict[str, object]] = [
        {
            "id": f"tx-{i:09d}",
            "ts": t,
            "amount": a,
            "age_days": age,
            "hour": h,
            "merchant_risk": risk,
            "country": _COUNTRIES[c],
        }
        for i, (t, a, age, h, risk, c) in enumerate(columns)
    ]
    return events, labels


def generate_transactions(
    n: int, seed: int = 7, start_ms: int | None = None
) -> list[dict[str, object]]:
    """Draw ``n`` transactions without labels; same events as ``generate_dataset``."""
    return generate_dataset(n, seed=seed, start_ms=start_ms)[0]


def feature_matrix(events: Sequence[Mapping[str, object]]) -> npt.NDArray[np.float32]:
    """Stack events into a float32 ``(n, len(FEATURES))`` matrix in ``FEATURES`` order."""
    matrix = np.empty((len(events), len(FEATURES)), dtype=np.float32)
    for col, name in enumerate(FEATURES):
        matrix[:, col] = np.array([e[name] for e in events], dtype=np.float32)
    return matrix
