"""Tests for how the demo closes the loop: the rewards its feedback producer sends, and how
the live view and the summary show the controller's work."""

from __future__ import annotations

import json

import pytest

from streamer.config import load_topology
from streamer.demo.feedback import RewardTally, feedback_value, reward_for
from streamer.demo.runner import (
    SETTLE_MARGIN_S,
    SETTLE_TIMEOUT_S,
    BanditSummary,
    DemoSummary,
    Ending,
    LiveLine,
    VariantLive,
    describe_loop,
    format_bandit,
    format_live_line,
    format_summary,
    format_versions,
    live_variants,
)
from tests.conftest import ROOT

# The rewards.


def test_a_prediction_earns_1_when_right_and_0_when_wrong() -> None:
    truth = {"a": 0, "b": 1, "c": 1, "d": 0}
    assert reward_for({"id": "a", "label": 0, "variant": "champion"}, truth) == 1
    assert reward_for({"id": "b", "label": 1}, truth) == 1
    assert reward_for({"id": "c", "label": 0}, truth) == 0  # a missed fraud
    assert reward_for({"id": "d", "label": 1}, truth) == 0  # a false alarm
    assert truth == {}  # each label is used once


def test_outputs_without_a_true_label_earn_nothing() -> None:
    truth = {"a": 1}
    assert reward_for({"id": "someone-else", "label": 1}, truth) is None
    assert reward_for({"label": 1}, truth) is None
    assert reward_for({"id": "a", "label": 1}, truth) == 1
    assert reward_for({"id": "a", "label": 1}, truth) is None  # a duplicate output


@pytest.mark.parametrize(
    ("label", "reward"),
    [
        pytest.param([1], 1, id="a one-element list"),
        pytest.param(1.0, 1, id="a float"),
        pytest.param([0], 0, id="a wrong one-element list"),
        pytest.param([1, 0], 0, id="several values"),
        pytest.param(None, 0, id="none"),
        pytest.param("1", 0, id="a string"),
        pytest.param(True, 0, id="a boolean"),
    ],
)
def test_labels_of_other_shapes_are_right_only_when_they_equal_the_truth(
    label: object, reward: int
) -> None:
    assert reward_for({"id": "a", "label": label}, {"a": 1}) == reward


def test_feedback_records_are_the_json_the_controller_reads() -> None:
    assert json.loads(feedback_value("120000-tx-000000007", 1)) == {
        "id": "120000-tx-000000007",
        "reward": 1,
    }


def test_the_tally_counts_and_averages_rewards_per_variant() -> None:
    tally = RewardTally()
    assert tally.total == 0 and tally.means() == {}
    for variant, reward in [("champion", 1), ("challenger", 1), ("champion", 0), ("champion", 1)]:
        tally.add(variant, reward)
    assert tally.total == 4
    assert tally.means() == {"challenger": (1, 1.0), "champion": (3, pytest.approx(2 / 3))}


# The live view.


def _line(rewards: int | None, *variants: VariantLive) -> LiveLine:
    return LiveLine(
        elapsed=12.0,
        served=36_012,
        dead_letters=361,
        rate=3_001.2,
        variants=list(variants),
        rewards=rewards,
    )


def test_live_line_shows_rewards_joined_and_each_variants_mean_reward() -> None:
    line = _line(
        33_100,
        VariantLive("champion", 0.3149, 900, "fraud_v1", 0.97375),
        VariantLive("challenger", 0.6851, 2_101, "1", 0.97572),
    )
    assert format_live_line(line) == (
        "t= 12.0s served 36,012 dl 361  3,001 ev/s rw 33,100"
        " | champion w0.31 30% v fraud_v1 r0.974 | challenger w0.69 70% v 1 r0.976"
    )


def test_live_line_shows_no_mean_before_the_first_reward() -> None:
    line = _line(
        0,
        VariantLive("champion", 0.9, 2_700, "fraud_v1"),
        VariantLive("challenger", None, 0, "1"),
    )
    assert format_live_line(line) == (
        "t= 12.0s served 36,012 dl 361  3,001 ev/s rw      0"
        " | champion w0.90 100% v fraud_v1 r- | challenger off    0% v 1 r-"
    )


def test_live_line_without_a_controller_shows_no_rewards() -> None:
    line = _line(None, VariantLive("champion", 1.0, 5, "fraud_v1", 0.5))
    assert format_live_line(line) == (
        "t= 12.0s served 36,012 dl 361  3,001 ev/s | champion w1.00 100% v fraud_v1"
    )


def test_live_line_with_rewards_stays_readable_at_large_counts() -> None:
    line = LiveLine(
        elapsed=1234.5,
        served=12_345_678,
        dead_letters=123_456,
        rate=98_765.0,
        variants=[
            VariantLive("champion", 0.02, 1_000, "fraud_v1", 0.9737),
            VariantLive("challenger", 0.98, 49_000, "12", None),
        ],
        rewards=12_000_000,
    )
    text = format_live_line(line)
    assert len(text) < 140, text
    assert "98,765 ev/s rw 12,000,000 | champion w0.02  2% v fraud_v1 r0.974" in text
    assert text.endswith(" | challenger w0.98 98% v 12 r-")


def test_live_variants_carry_the_controllers_mean_rewards() -> None:
    variants = live_variants(
        weights={"champion": 0.2, "challenger": 0.8},
        versions={"champion": "fraud_v1", "challenger": "1"},
        before={"champion": 10},
        after={"champion": 30, "challenger": 80},
        means={"champion": 0.97, "candidate": 0.5},
    )
    assert variants == [
        VariantLive("champion", 0.2, 20, "fraud_v1", 0.97),
        VariantLive("challenger", 0.8, 80, "1", None),  # no evidence yet
    ]


# The summary.


def _summary(bandit: BanditSummary | None) -> DemoSummary:
    return DemoSummary(
        events=3_000,
        served=2_970,
        dead_letters={"decode_failed": 30},
        seconds=2.5,
        throughput=2_900.0,
        latency_ms={"p50": 4.0, "p95": 9.0, "p99": 12.0, "max": 20.0},
        variants={"champion": 2_000, "challenger": 970},
        versions={"champion": {"fraud_v1": 2_000}, "challenger": {"1": 970}},
        shadow_scored=2_970,
        bandit=bandit,
    )


def test_summary_shows_rewards_mean_reward_per_variant_and_the_final_split() -> None:
    bandit = BanditSummary(
        rewards_sent=2_970,
        rewards={"challenger": (970, 0.97567), "champion": (2_000, 0.9735)},
        joined=2_968,
        updates=3,
        weights={"champion": 0.0213, "challenger": 0.9787},
        evidence={"challenger": (970.0, 0.97567), "champion": (2_000.0, 0.9735)},  # this run's
    )
    lines = format_summary(_summary(bandit)).splitlines()
    assert lines[-3:] == [
        "  rewards sent     2970  (1 when the prediction was right; 2968 joined by the controller)",
        "  mean reward      challenger 0.9757 (970), champion 0.9735 (2000)",
        "  final split      challenger 0.98, champion 0.02  (3 controller updates)",
    ]


def test_summary_shows_what_the_controller_learned_in_earlier_runs_too() -> None:
    bandit = BanditSummary(
        rewards_sent=3_000,
        rewards={"challenger": (2_940, 0.9735), "champion": (60, 1.0)},
        joined=3_000,
        updates=0,
        weights={"champion": 0.02, "challenger": 0.98},
        evidence={"challenger": (49_172.0, 0.97597), "champion": (13_265.0, 0.97032)},
    )
    assert format_bandit(bandit)[1:] == [
        "  mean reward      challenger 0.9735 (2940), champion 1.0000 (60)",
        "  learned so far   challenger 0.9760 (49172), champion 0.9703 (13265)"
        "  (the controller's evidence)",
        "  final split      challenger 0.98, champion 0.02  (0 controller updates)",
    ]


def test_summary_of_a_loop_that_never_moved() -> None:
    bandit = BanditSummary(
        rewards_sent=0, rewards={}, joined=0, updates=1, weights={"champion": 1.0}
    )
    assert format_bandit(bandit)[1:] == [
        "  mean reward      none",
        "  final split      champion 1.00  (1 controller update)",
    ]


def test_summary_without_a_bandit_has_no_reward_lines() -> None:
    text = format_summary(_summary(None))
    assert "reward" not in text and "final split" not in text
    assert text.splitlines()[-1].startswith("  latency (event -> prediction)")


# The demo topology.


def test_the_demo_topology_closes_the_loop() -> None:
    topology = load_topology(ROOT / "topologies" / "fraud.yaml")
    bandit = topology.bandit
    assert topology.routing.strategy == "bandit" and bandit is not None
    assert bandit.reward == "binary" and bandit.feedback_topic == "fraud-feedback"
    assert bandit.metrics_port not in (None, topology.metrics.port)  # both run in one process
    # Short enough that the weights move within a demo of a minute.
    assert bandit.update_interval_s <= 2 and bandit.reward_window_s <= 60
    assert [v.name for v in topology.served] == ["champion", "challenger"]
    assert describe_loop(topology) == (
        "bandit: thompson controller; each served prediction earns 1 when right, 0 when wrong, "
        "0-3 s later on fraud-feedback"
    )


# When the live view ends.


def test_without_a_controller_the_view_ends_when_every_event_is_served() -> None:
    ending = Ending(events=100, interval_s=None)
    assert not ending.over(1.0, 99, lambda: False)
    assert ending.over(2.0, 100, lambda: False)


def test_with_a_controller_it_waits_for_the_rewards_then_an_update_interval() -> None:
    ending = Ending(events=100, interval_s=1.0)
    assert not ending.over(1.0, 50, lambda: True)
    assert not ending.over(2.0, 100, lambda: False)  # rewards still on their way
    assert not ending.over(3.0, 100, lambda: True)  # all joined: the last weights are due
    assert not ending.over(4.0, 100, lambda: True)
    assert ending.over(4.0 + SETTLE_MARGIN_S, 100, lambda: True)


def test_rewards_that_never_join_hold_the_view_only_so_long() -> None:
    ending = Ending(events=100, interval_s=2.0)
    assert not ending.over(10.0, 100, lambda: False)
    assert not ending.over(10.0 + SETTLE_TIMEOUT_S - 0.1, 100, lambda: False)
    assert not ending.over(10.0 + SETTLE_TIMEOUT_S, 100, lambda: False)
    assert ending.over(12.0 + SETTLE_TIMEOUT_S + SETTLE_MARGIN_S, 100, lambda: False)


# The demo's live view and summary.


def _plain_line(*variants: VariantLive) -> LiveLine:
    return LiveLine(
        elapsed=3.0, served=14_512, dead_letters=145, rate=5_010.4, variants=list(variants)
    )


def test_live_line_shows_weight_share_and_version_per_variant() -> None:
    line = _plain_line(
        VariantLive("champion", 0.9, 4_459, "fraud_v1"),
        VariantLive("challenger", 0.1, 551, "1"),
    )
    assert format_live_line(line) == (
        "t=  3.0s served 14,512 dl 145  5,010 ev/s"
        " | champion w0.90 89% v fraud_v1 | challenger w0.10 11% v 1"
    )


def test_live_line_shows_disabled_variants_and_idle_seconds() -> None:
    idle = _plain_line(
        VariantLive("champion", 1.0, 0, "fraud_v1"), VariantLive("challenger", None, 0, "2")
    )
    assert format_live_line(idle).endswith(
        " | champion w1.00   - v fraud_v1 | challenger off     - v 2"
    )
    promoted = _plain_line(
        VariantLive("champion", None, 0, "fraud_v1"), VariantLive("challenger", 1.0, 9, "2")
    )
    assert format_live_line(promoted).endswith(
        " | champion off    0% v fraud_v1 | challenger w1.00 100% v 2"
    )


def test_live_variants_count_what_each_variant_served_since_the_last_line() -> None:
    variants = live_variants(
        weights={"champion": 0.8, "challenger": 0.2},
        versions={"champion": "fraud_v1", "challenger": "3", "candidate": "fraud_v3"},
        before={"champion": 100, "challenger": 10, "canary": 5},
        after={"champion": 180, "challenger": 30, "canary": 5},
    )
    assert variants == [
        VariantLive("champion", 0.8, 80, "fraud_v1"),
        VariantLive("challenger", 0.2, 20, "3"),
        VariantLive("canary", None, 0, "?"),  # disabled, and no model known
    ]
    first = live_variants({"champion": 1.0}, {"champion": "fraud_v1"}, {}, {"champion": 7})
    assert first == [VariantLive("champion", 1.0, 7, "fraud_v1")]


def test_versions_list_each_variant_and_counts_only_when_one_changed() -> None:
    assert format_versions({}) == "none"
    assert (
        format_versions({"challenger": {"1": 300}, "champion": {"fraud_v1": 2_700}})
        == "challenger 1, champion fraud_v1"
    )
    # Numeric versions in numeric order (a new version was added while the demo ran).
    assert (
        format_versions({"challenger": {"10": 5, "2": 120, "1": 30}, "champion": {"fraud_v1": 9}})
        == "challenger 1 (30) 2 (120) 10 (5), champion fraud_v1"
    )


def test_summary_shows_the_split_and_model_versions() -> None:
    summary = DemoSummary(
        events=3_000,
        served=2_970,
        dead_letters={"decode_failed": 30},
        seconds=2.5,
        throughput=2_900.0,
        latency_ms={"p50": 4.0, "p95": 9.0, "p99": 12.0, "max": 20.0},
        variants={"champion": 2_673, "challenger": 297},
        versions={"champion": {"fraud_v1": 2_673}, "challenger": {"1": 297}},
        shadow_scored=2_970,
    )
    lines = format_summary(summary).splitlines()
    assert "  predictions out  2970  (challenger 297 (10%), champion 2673 (90%))" in lines
    assert "  model versions   challenger 1, champion fraud_v1" in lines
    assert "  shadow scored    2970" in lines
