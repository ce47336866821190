"""Router: weighted, sticky, exhaustive splits."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.routing import Router

IDS = [f"tx-{i:09d}" for i in range(20_000)]


def served_sets(router: Router, ids: list[str]) -> dict[str, set[str]]:
    routes = router.route(ids)
    return {name: {ids[int(r)] for r in rows} for name, rows in routes.served.items()}


def test_single_variant_gets_everything() -> None:
    router = Router({"champion": 0.3})
    routes = router.route(IDS[:1000])
    assert list(routes.served) == ["champion"]
    np.testing.assert_array_equal(routes.served["champion"], np.arange(1000))
    assert routes.propensity == {"champion": 1.0}
    assert router.weights == {"champion": 1.0}


def test_empty_batch() -> None:
    routes = Router({"a": 0.5, "b": 0.5}).route([])
    assert all(len(rows) == 0 for rows in routes.served.values())
    assert set(routes.served) == {"a", "b"}


def test_split_follows_weights() -> None:
    routes = Router({"champion": 0.9, "challenger": 0.1}).route(IDS)
    share = {name: len(rows) / len(IDS) for name, rows in routes.served.items()}
    assert share["champion"] == pytest.approx(0.9, abs=0.02)
    assert share["challenger"] == pytest.approx(0.1, abs=0.02)
    assert routes.propensity == pytest.approx({"champion": 0.9, "challenger": 0.1})


def test_three_way_split() -> None:
    routes = Router({"a": 0.5, "b": 0.3, "c": 0.2}).route(IDS)
    share = {name: len(rows) / len(IDS) for name, rows in routes.served.items()}
    assert share == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.2}, abs=0.02)


def test_zero_weight_variant_gets_nothing() -> None:
    routes = Router({"a": 1.0, "b": 0.0}).route(IDS[:5000])
    assert len(routes.served["a"]) == 5000
    assert len(routes.served["b"]) == 0
    assert routes.propensity == {"a": 1.0, "b": 0.0}


def test_sticky_per_id() -> None:
    router = Router({"champion": 0.5, "challenger": 0.5})
    first = served_sets(router, IDS[:4000])
    # Same ids again, in another order, in other batches, and through a fresh router.
    shuffled = list(reversed(IDS[:4000]))
    again = served_sets(Router({"champion": 0.5, "challenger": 0.5}), shuffled)
    assert first == again
    for chunk_start in range(0, 4000, 333):
        chunk = IDS[:4000][chunk_start : chunk_start + 333]
        for name, ids in served_sets(router, chunk).items():
            assert ids <= first[name]
    # A duplicated id within one batch lands on the same variant both times.
    dup = served_sets(router, [IDS[0], IDS[0]])
    assert sum(1 for ids in dup.values() if IDS[0] in ids) == 1


def test_weights_normalised() -> None:
    router = Router({"a": 3.0, "b": 1.0})
    assert router.weights == pytest.approx({"a": 0.75, "b": 0.25})
    routes = router.route(IDS)
    assert routes.propensity == pytest.approx({"a": 0.75, "b": 0.25})
    assert len(routes.served["a"]) / len(IDS) == pytest.approx(0.75, abs=0.02)
    assert Router({"a": 30, "b": 10}).route(IDS).served["a"].tolist() == (
        routes.served["a"].tolist()
    )


@pytest.mark.parametrize(
    "weights",
    [{"a": 0.9, "b": 0.1}, {"a": 0.2, "b": 0.3, "c": 0.5}, {"a": 1e-9, "b": 1.0}],
)
def test_every_row_served_exactly_once(weights: dict[str, float]) -> None:
    routes = Router(weights).route(IDS)
    rows = np.concatenate(list(routes.served.values()))
    assert sorted(rows.tolist()) == list(range(len(IDS)))
    for r in routes.served.values():
        assert r.tolist() == sorted(r.tolist())  # ascending within a variant


@pytest.mark.parametrize(
    "weights",
    [
        {},
        {"a": 0.0},
        {"a": 0.0, "b": 0.0},
        {"a": -0.1, "b": 1.1},
        {"a": float("nan"), "b": 1.0},
        {"a": float("inf"), "b": 1.0},
    ],
)
def test_invalid_weights_rejected(weights: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="weights"):
        Router(weights)


# --- Scorer with the real demo models --------------------------------------------------------
