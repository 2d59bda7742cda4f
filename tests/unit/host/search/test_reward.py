"""Rewards: the paper's flops reward exactly, the MnasNet constraint, targets and device aggregation."""

from __future__ import annotations

import math

import pytest

from host.errors import ConfigError
from host.search.reward import (
    Constraint,
    Objective,
    Target,
    aggregate_ratio,
    constrained_reward,
    flops_reward,
)


def test_flops_reward_matches_paper_band():
    assert flops_reward(0.9, 500, 1000, target=0.5) == pytest.approx(90.0)
    assert flops_reward(0.9, 460, 1000, target=0.5) == pytest.approx(90.0)  # 54% reduction, inside +-5
    assert flops_reward(0.9, 550, 1000, target=0.5) == pytest.approx(90.0)  # edge of the band
    assert flops_reward(0.9, 600, 1000, target=0.5) == pytest.approx(-0.1)
    assert flops_reward(0.9, 300, 1000, target=0.5) == pytest.approx(-0.1)  # overshoot is penalised too


def test_soft_constraint_is_smooth_and_prefers_accuracy():
    assert constrained_reward(0.9, 1.0) == pytest.approx(0.9)
    assert constrained_reward(0.9, 2.0) == pytest.approx(0.9 * 2 ** -0.5)
    mnas = Constraint.named("mnasnet")
    assert constrained_reward(0.9, 2.0, mnas) == pytest.approx(0.9 * 2 ** -0.07)
    # just below and above the target agree (no cliff)
    assert constrained_reward(0.9, 0.9999) == pytest.approx(constrained_reward(0.9, 1.0001), rel=1e-3)
    # faster is better, more accurate is better
    assert constrained_reward(0.9, 0.5) > constrained_reward(0.9, 0.8)
    assert constrained_reward(0.95, 1.2) > constrained_reward(0.90, 1.2)


def test_balanced_constraint_gentle_below_steep_above():
    balanced = Constraint.named("balanced")
    assert constrained_reward(0.9, 0.5, balanced) == pytest.approx(0.9 * 0.5 ** -0.07)
    assert constrained_reward(0.9, 2.0, balanced) == pytest.approx(0.9 * 2 ** -0.5)
    # below the target a point of accuracy outweighs running twice as fast as needed
    assert constrained_reward(0.91, 1.0, balanced) > constrained_reward(0.86, 0.5, balanced)


def test_hard_constraint():
    hard = Constraint.named("hard")
    assert constrained_reward(0.8, 0.5, hard) == pytest.approx(0.8)
    assert constrained_reward(0.8, 2.0, hard) == pytest.approx(0.4)
    with pytest.raises(ConfigError):
        Constraint.named("medium")


def test_target_parsing():
    assert Target.parse("0.5x", "latency") == Target(0.5, relative=True)
    assert Target.parse("0.3", "latency").relative
    assert Target.parse("12ms", "latency") == Target(12.0, relative=False, kind="latency")
    assert Target.parse("0.5s", "latency").value == pytest.approx(500.0)
    assert Target.parse("3mJ", "energy") == Target(3.0, relative=False, kind="energy")
    assert Target.parse("0.5x", "latency").resolve(8.0) == pytest.approx(4.0)
    for bad in ("fast", "-1ms", "1.5x"):
        with pytest.raises(ConfigError):
            Target.parse(bad, "latency")
    with pytest.raises(ConfigError, match="objective is latency"):
        Target.parse("3mJ", "latency")


def test_aggregation_worst_and_weighted():
    ratios = {"pi": 2.0, "jetson": 0.5}
    assert aggregate_ratio(ratios) == 2.0
    assert aggregate_ratio(ratios, "weighted") == pytest.approx(1.0)
    assert aggregate_ratio(ratios, "weighted", {"pi": 3, "jetson": 1}) == pytest.approx(
        math.exp(0.75 * math.log(2) + 0.25 * math.log(0.5))
    )
    with pytest.raises(ConfigError):
        aggregate_ratio(ratios, "weighted", {"pi": 1})
    with pytest.raises(ConfigError):
        aggregate_ratio(ratios, "median")


def test_objective_reward_uses_dense_reference_and_worst_device():
    obj = Objective("latency", target=Target(0.5, relative=True))
    # pi: 4ms vs target 0.5*8 = 4 -> ratio 1; jetson: 3ms vs 0.5*2=1 -> ratio 3 (worst)
    r = obj.reward(0.9, 10, 100, measured={"pi": 4.0, "jetson": 3.0}, dense_measured={"pi": 8.0, "jetson": 2.0})
    assert r == pytest.approx(0.9 * 3 ** -0.5)
    assert Objective("flops", target_flops=0.5).reward(0.9, 50, 100) == pytest.approx(90.0)
    with pytest.raises(ValueError):
        obj.reward(0.9, 10, 100)
    with pytest.raises(ConfigError):
        Objective("speed")
    with pytest.raises(ConfigError):
        Objective("flops", target_flops=1.5)


def test_pareto_front():
    from host.report.pareto import pareto_front

    pts = [(0.9, 5.0), (0.8, 3.0), (0.85, 6.0), (0.95, 9.0), (0.7, 3.5)]
    assert pareto_front(pts) == [1, 0, 3]


def test_accuracy_out_of_range():
    with pytest.raises(ValueError):
        flops_reward(90.0, 1, 2, 0.5)
