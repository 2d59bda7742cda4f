"""Rewards: how much a candidate is worth, from its validation accuracy and its cost.

Accuracy is always a fraction in [0, 1] measured on the VALIDATION split (never the test split).

``flops`` — the AutoSculpt paper's reward, reproduced exactly::

    r = 100 * acc      if |reduction - target| <= band      (band = 0.05, i.e. +-5 points)
    r = acc - 1        otherwise

where ``reduction = 1 - macs / dense_macs``. Note the plateau: outside the band every candidate scores in
[-1, 0] and inside it in [0, 100], with no gradient towards the band and none for overshooting it. A
policy only learns once it lands in the band by chance; we keep it exact for comparison, not because it
is a good signal.

``latency`` / ``energy`` — a MnasNet-style (Tan et al., 2019) soft constraint on the MEASURED figure::

    r = acc * (m / T) ** w,   w = alpha if m <= T else beta

Named variants (``--constraint``):

* ``hard`` (default) ``alpha = 0, beta = -1``: no bonus below the target, reward ~ acc * T/m above it: the
  most accurate plan that meets the target wins, the resource-constrained convention (AMC, NetAdapt) for a
  tool the user gives a budget. The reward is continuous at the target (a plan 5% too slow with 1 point
  more accuracy scores higher), which keeps a slope for the policy; the target is a wall for what is
  *delivered* (:attr:`Constraint.budget`): the final stage finishes plans that meet it before any that
  do not, and while none measured does, a plan the cost model expects to meet it is measured. Without the
  wall, torchvision's MobileNetV3-small at 0.7x delivered an accurate plan at 0.80x of dense (reward
  0.95 x 0.7/0.8 = 0.83) over plans at 0.70x that were at 85% after the short recovery steps (0.80-0.85).
  Measured on ResNet-20/MNIST-5k: with ``balanced`` a 0.495x target ended at 0.36x and 0.65 points less
  accurate than needed, because 2% reward for being faster outweighed the accuracy the short candidate
  scoring can resolve.
* ``balanced`` ``alpha = -0.07, beta = -0.5``: MnasNet's gentle slope below the target (a plan twice as fast
  as needed gains 5%) and a steep one above it (2x too slow loses 29%). Smooth everywhere.
* ``soft`` ``alpha = beta = -0.5``: faster than the target keeps paying (a plan at 0.4x with 84% beat one at
  0.5x with 86% on ResNet-20/MNIST), for exploring the trade-off rather than meeting a budget.
* ``mnasnet`` ``alpha = beta = -0.07``: the paper's soft constraint, accuracy dominates.

``T`` is absolute (``12ms``, ``3mJ``) or relative to the measured dense model (``0.5x``).

Several devices: ``worst`` (default) uses the largest m/T ratio over devices — the candidate must fit the
slowest board; ``weighted`` uses the weighted geometric mean of the ratios (weights sum to 1), so a
candidate that is twice as slow on a device of weight 0.5 pays ``2 ** (0.5 * w)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from host.errors import ConfigError
from host.kinds import Aggregate, ConstraintName, ObjectiveName, choices

DEFAULT_TARGET = "0.5x"  # latency/energy target when none is given: half the dense model's figure
SOFT_EXPONENT = -0.5
MNASNET_EXPONENT = -0.07
FLOPS_BAND = 0.05

_TARGET_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(x|ms|s|us|mj|j)?\s*$", re.IGNORECASE)
_UNIT_SCALE = {"ms": 1.0, "s": 1000.0, "us": 0.001, "mj": 1.0, "j": 1000.0}
_UNIT_KIND = {"ms": ObjectiveName.LATENCY, "s": ObjectiveName.LATENCY, "us": ObjectiveName.LATENCY,
              "mj": ObjectiveName.ENERGY, "j": ObjectiveName.ENERGY}


@dataclass(frozen=True)
class Target:
    """A latency or energy target: ``relative`` (fraction of the dense model's figure) or absolute."""

    value: float
    relative: bool
    kind: ObjectiveName | None = None  # latency / energy for an absolute value, None for a relative one

    @classmethod
    def parse(cls, text: str, objective: str) -> Target:
        """Parse ``0.5x``, ``12ms``, ``0.8s``, ``3mJ`` or ``0.002J``; a bare number below 1 means relative."""
        match = _TARGET_RE.match(str(text))
        if not match:
            raise ConfigError(
                f"cannot read target {text!r}",
                hint="write a fraction of the dense model like 0.5x, or an absolute value like 12ms or 3mJ",
            )
        value = float(match.group(1))
        unit = (match.group(2) or "").lower()
        if value <= 0:
            raise ConfigError(f"target {text!r} must be positive", hint="e.g. --target-latency 0.5x")
        if unit == "x" or (not unit and value < 1.0):
            if value > 1.0:
                raise ConfigError(
                    f"relative target {text!r} is slower than the dense model",
                    hint="a relative target is a fraction of the dense model, e.g. 0.5x",
                )
            return cls(value=value, relative=True)
        if not unit:
            unit = "ms" if objective == ObjectiveName.LATENCY else "mj"
        kind = _UNIT_KIND[unit]
        if kind != objective:
            raise ConfigError(
                f"target {text!r} is a {kind} but the objective is {objective}",
                hint="use ms/s for --objective latency and mJ/J for --objective energy",
            )
        return cls(value=value * _UNIT_SCALE[unit], relative=False, kind=kind)

    def resolve(self, dense_value: float) -> float:
        """The absolute target (ms or mJ) given the dense model's measured figure."""
        return self.value * dense_value if self.relative else self.value

    def __str__(self) -> str:
        if self.relative:
            return f"{self.value:g}x"
        return f"{self.value:g}{'ms' if self.kind == ObjectiveName.LATENCY else 'mJ'}"


@dataclass(frozen=True)
class Constraint:
    """Exponents of the MnasNet constraint: ``alpha`` below the target, ``beta`` above it."""

    alpha: float = SOFT_EXPONENT
    beta: float = SOFT_EXPONENT
    budget: bool = False  # the target is a wall for the delivered plan: those that meet it come first

    @classmethod
    def named(cls, name: str) -> Constraint:
        shapes = {ConstraintName.BALANCED: (MNASNET_EXPONENT, SOFT_EXPONENT), ConstraintName.SOFT: (SOFT_EXPONENT, SOFT_EXPONENT),
                  ConstraintName.MNASNET: (MNASNET_EXPONENT, MNASNET_EXPONENT), ConstraintName.HARD: (0.0, -1.0)}
        if name not in shapes:
            raise ConfigError(f"unknown constraint {name!r}", hint=f"use one of: {', '.join(choices(ConstraintName))}")
        alpha, beta = shapes[ConstraintName(name)]
        return cls(alpha=alpha, beta=beta, budget=name == ConstraintName.HARD)


def flops_reward(accuracy: float, macs: int, dense_macs: int, target: float, band: float = FLOPS_BAND) -> float:
    """The paper's reward: ``100*acc`` inside ``target +- band`` of MAC reduction, else ``acc - 1``."""
    _check_accuracy(accuracy)
    if dense_macs <= 0:
        raise ValueError("dense_macs must be positive")
    reduction = 1.0 - macs / dense_macs
    return 100.0 * accuracy if abs(reduction - target) <= band + 1e-12 else accuracy - 1.0


def constrained_reward(accuracy: float, ratio: float, constraint: Constraint = Constraint()) -> float:
    """MnasNet soft/hard constraint ``acc * ratio ** w`` where ``ratio = measured / target``."""
    _check_accuracy(accuracy)
    if not ratio > 0 or math.isinf(ratio):
        raise ValueError(f"ratio must be a positive finite number, got {ratio}")
    exponent = constraint.alpha if ratio <= 1.0 else constraint.beta
    return accuracy * ratio**exponent


def aggregate_ratio(
    ratios: Mapping[str, float], mode: str = Aggregate.WORST, weights: Mapping[str, float] | None = None
) -> float:
    """Combine per-device ``measured/target`` ratios: ``worst`` = max, ``weighted`` = geometric mean."""
    if not ratios:
        raise ValueError("no device ratios to aggregate")
    if mode == Aggregate.WORST:
        return max(ratios.values())
    if mode == Aggregate.WEIGHTED:
        if weights is None:
            weights = {name: 1.0 for name in ratios}
        missing = set(ratios) - set(weights)
        if missing:
            raise ConfigError(f"no weight for device(s) {sorted(missing)}", hint="give every device a weight")
        total = sum(weights[name] for name in ratios)
        if total <= 0:
            raise ConfigError("device weights must sum to a positive number", hint="e.g. 1 for each device")
        return math.exp(sum(weights[n] / total * math.log(r) for n, r in ratios.items()))
    raise ConfigError(f"unknown device aggregation {mode!r}", hint=f"use one of: {', '.join(choices(Aggregate))}")


@dataclass(frozen=True)
class Objective:
    """Everything needed to turn (accuracy, cost, measurements) into one reward."""

    name: ObjectiveName
    target_flops: float = 0.5  # MAC reduction wanted by the flops objective (0.5 = half the MACs)
    target: Target | None = None  # latency / energy target
    constraint: Constraint = Constraint()
    aggregate: Aggregate = Aggregate.WORST
    weights: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.name not in choices(ObjectiveName):
            raise ConfigError(f"unknown objective {self.name!r}", hint=f"use one of: {', '.join(choices(ObjectiveName))}")
        object.__setattr__(self, "name", ObjectiveName(self.name))
        if not 0.0 < self.target_flops < 1.0:
            raise ConfigError(
                f"--target-flops {self.target_flops} is not a reduction in (0, 1)",
                hint="e.g. --target-flops 0.5 removes half of the MACs",
            )

    @property
    def needs_measurement(self) -> bool:
        return self.name.measured

    def ratio(self, measured: Mapping[str, float], dense_measured: Mapping[str, float]) -> float:
        """The devices' ``measured / target`` ratios, aggregated (``worst``: the largest): <= 1 meets the target."""
        target = self.target or Target.parse(DEFAULT_TARGET, self.name)
        ratios = {dev: value / target.resolve(dense_measured[dev]) for dev, value in measured.items()}
        return aggregate_ratio(ratios, self.aggregate, dict(self.weights) if self.weights else None)

    def rank_key(self, reward: float, meets_target: bool) -> tuple[bool, float]:
        """Sort key (ascending) of plans to deliver: best reward first; under a budget constraint, every plan
        that meets the target before any that does not."""
        return (self.constraint.budget and not meets_target, -reward)

    def reward(
        self,
        accuracy: float,
        macs: int,
        dense_macs: int,
        measured: Mapping[str, float] | None = None,
        dense_measured: Mapping[str, float] | None = None,
    ) -> float:
        """Reward of one candidate. ``measured``/``dense_measured``: per-device ms (or mJ) of it / of dense."""
        if self.name == ObjectiveName.FLOPS:
            return flops_reward(accuracy, macs, dense_macs, self.target_flops)
        if not measured or not dense_measured:
            raise ValueError(f"the {self.name} objective needs measurements of the candidate and of dense")
        return constrained_reward(accuracy, self.ratio(measured, dense_measured), self.constraint)


def _check_accuracy(accuracy: float) -> None:
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be a fraction in [0, 1], got {accuracy}")
