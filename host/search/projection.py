"""Target-aware proposals: a prior whose plans cost about the target, and an AMC-style projection of any
proposed plan onto the target band, both driven by the :class:`~host.search.costmodel.CostModel`.

Why: with a budget of a few dozen candidates, a plan far from the target (nearly dense, or pruned to
collapse) teaches little and costs as much as any other. The prior sets the untrained policy's "keep"
preference so that its plans cost about the target on average (instead of a fixed preference that drew
mostly dense plans); the projection then tightens or relaxes single layers, one step of aggressiveness at
a time, until the predicted cost is inside the band, so every evaluation is spent near the target and the
policy learns WHERE to prune rather than HOW MUCH (as in AMC, He et al. 2018). The policy is trained on the
reward of the projected plan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from host.search.costmodel import CostModel

logger = logging.getLogger(__name__)

# exact-cost projection (project(exact=...)): corrected rounds of the model's walk, then single steps
EXACT_ROUNDS = 4
EXACT_STEPS = 8


@dataclass(frozen=True)
class Band:
    """Acceptable predicted cost, as fractions of dense: ``low <= ratio <= high``."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high:
            raise ValueError(f"invalid band [{self.low}, {self.high}]")

    @classmethod
    def around(cls, target: float, below: float, above: float) -> Band:
        """``[target - below, target + above]`` (clipped to stay positive)."""
        return cls(max(1e-3, target - below), max(1e-3, target + above))


@dataclass(frozen=True)
class TargetBand:
    """The band plans are projected into, for a target ratio ``target`` and a band half-width ``width``,
    recomputed from the cost model each time a plan is projected (:meth:`for_model`).

    Soft constraints: ``[target - width, target + width / 2]``, a little under the target rather than over.
    A hard constraint (the target is a wall for the delivered plan): ``[target - width - e, target - e]``,
    where ``e`` is the cost model's typical error on plans it has not seen (:attr:`CostModel.error`, at most
    ``width``). A plan predicted just under the wall is measured over it about half the time, and under a
    hard constraint such a measurement is a candidate spent on nothing the search can deliver: with the old
    band (up to ``target + width / 2``) budget-8 searches of LCNet-0.5 and MobileNetV3-small at 0.7x
    delivered 0.79x plans, every candidate proposed at a predicted 0.70-0.73x.

    A cost known exactly before evaluation (``exact``: the FLOPs objective's MAC count) has no error to leave room
    for: ``[target - width, target + width]``, the band the FLOPs reward pays for when ``width`` is its own."""

    target: float
    width: float
    hard: bool = False
    exact: bool = False

    def for_model(self, model: CostModel) -> Band:
        if self.exact:
            return Band.around(self.target, self.width, self.width)
        if not self.hard:
            return Band.around(self.target, self.width, self.width / 2)
        margin = min(max(model.error, 0.0), self.width)
        return Band.around(self.target - margin, self.width, 0.0)


def sample_prior(choice_mask: np.ndarray, keep_index: int, keep_logit: float, uniforms: np.ndarray) -> np.ndarray:
    """Per-layer choices [L] from the prior (valid choices uniform, ``keep`` with logit ``keep_logit``).

    ``uniforms`` [L] in [0, 1) drive the inverse-CDF draw, so equal uniforms give comparable plans.
    """
    logits = np.where(choice_mask, 0.0, -np.inf)
    logits[:, keep_index] = np.where(choice_mask[:, keep_index], keep_logit, -np.inf)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    picks = (cdf < uniforms[:, None]).sum(axis=1)
    return np.minimum(picks, choice_mask.shape[1] - 1).astype(np.int64)


def calibrate_keep_logit(choice_mask: np.ndarray, keep_index: int, model: CostModel, target: float,
                         samples: int = 64, seed: int = 0) -> float:
    """The ``keep`` logit whose prior plans have a mean predicted cost ratio closest to ``target``."""
    uniforms = np.random.default_rng(seed).random((samples, choice_mask.shape[0]))

    def mean_ratio(logit: float) -> float:
        return float(np.mean([model.predict(sample_prior(choice_mask, keep_index, logit, u)) for u in uniforms]))

    lo, hi = -4.0, 8.0  # more keep -> costlier plans: the mean ratio increases with the logit
    if mean_ratio(lo) >= target:
        return lo
    if mean_ratio(hi) <= target:
        return hi
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_ratio(mid) < target else (lo, mid)
    logger.info("prior keep logit %.2f (mean predicted cost %.3f of dense)", hi, mean_ratio(hi))
    return hi


def project(choices: np.ndarray, choice_mask: np.ndarray, model: CostModel, band: Band,
            rng: np.random.Generator, spread: bool = False,
            exact: Callable[[np.ndarray], float | None] | None = None) -> np.ndarray:
    """``choices`` moved, one layer and one step of aggressiveness at a time, until the predicted cost is
    inside ``band`` (or no move is left). Layers are picked at random (``spread``: at random among the least
    pruned when tightening / the most pruned when relaxing, which spreads the cut evenly); the rest of the
    plan is kept.

    ``exact``: the plan's true cost ratio when it can be computed before evaluating the plan (the FLOPs
    objective's MAC count, :meth:`~host.search.space.SearchSpace.mac_ratio`; None for a plan it cannot count).
    The model alone puts many plans outside the band (benchmarks/projection_bench.py: 6 of 12 prior plans of
    ResNet-20 at a 0.8 MAC cut inside, 0 of 12 of MobileNetV2 at 0.5), each a candidate spent on the out-of-band reward. With ``exact``, the model's walk is
    corrected by the model's error where it stopped (the band shifted by ``predicted - exact``) for up to
    :data:`EXACT_ROUNDS` rounds, then walked on step by step judged by ``exact`` (at most :data:`EXACT_STEPS`
    steps): at most ``EXACT_ROUNDS + EXACT_STEPS + 1`` exact counts per plan, which matters where one count takes
    seconds (a ResNet-50 at 224 px). The plan closest to the band among those counted is returned."""
    out = np.asarray(choices, np.int64).copy()
    keep = model.keep_index
    # each layer's ladder: keep, then the valid choices the model believes make it cheaper, least aggressive
    # first. A choice believed to cost MORE than keep (a kernel mix slower than dense) is off the ladder: a
    # layer holding one stands at keep's rung, so tightening replaces it and relaxing returns to keep.
    ladders = []
    for valid in choice_mask:
        cheaper = [k for k in np.flatnonzero(valid) if k != keep and model.reduction(k) > 0]
        ladders.append([keep] + sorted(cheaper, key=model.reduction))

    def rung(i: int) -> int:
        return ladders[i].index(out[i]) if out[i] in ladders[i] else 0

    def miss(ratio: float) -> float:
        return max(band.low - ratio, ratio - band.high, 0.0)

    def walk(cost: Callable[[np.ndarray], float], steps: int, within: Band = band) -> None:
        """Moves ``out`` towards ``within``, one step at a time, until ``cost`` says it is inside."""
        for _ in range(steps):
            ratio = cost(out)
            if within.low <= ratio <= within.high:
                return
            tighten = ratio > within.high
            movable = [i for i, ladder in enumerate(ladders)
                       if (rung(i) < len(ladder) - 1 if tighten else (rung(i) > 0 or out[i] != keep))]
            if not movable:
                return
            if spread:
                rungs = [rung(i) for i in movable]
                extreme = min(rungs) if tighten else max(rungs)
                movable = [i for i, r in zip(movable, rungs, strict=True) if r == extreme]
            i = movable[int(rng.integers(len(movable)))]
            out[i] = ladders[i][rung(i) + 1] if tighten else ladders[i][max(rung(i) - 1, 0)]

    walk(model.predict, 8 * len(out) + 8)
    if exact is None:
        return out

    closest = (np.inf, out.copy())

    def counted(plan: np.ndarray) -> float:
        nonlocal closest
        ratio = exact(plan)
        ratio = model.predict(plan) if ratio is None else ratio
        if miss(ratio) < closest[0]:
            closest = (miss(ratio), plan.copy())
        return ratio

    for _ in range(EXACT_ROUNDS):
        offset = model.predict(out) - counted(out)
        if closest[0] == 0.0:
            return closest[1]
        walk(model.predict, 8 * len(out) + 8, Band(max(1e-3, band.low + offset), max(1e-3, band.high + offset)))
    out[:] = closest[1]
    walk(counted, EXACT_STEPS)
    counted(out)
    return closest[1]


def family_seeds(choice_mask: np.ndarray, vocab: list[str], keep_index: int, model: CostModel, band: Band,
                 rng: np.random.Generator,
                 exact: Callable[[np.ndarray], float | None] | None = None) -> list[np.ndarray]:
    """One plan per pattern family that uses ONLY that family, grown evenly from dense by :func:`project`
    into ``band``. Evaluated before the policy's first proposals, they give the cost model one sample of every
    family (how each realizes on the device) and the search a structured baseline of each kind, e.g. the
    channel-only plan a uniform channel pruner would find. ``exact``: as :func:`project`'s; a family whose
    plan's exact cost is still outside the band cannot reach it alone (a kernel-only plan of ResNet-20 removes at
    most ~70% of its MACs), and is left out rather than spend a candidate on the out-of-band reward."""
    families = []
    for name in vocab:
        family = name.split(":", 1)[0]
        if family not in families and name != vocab[keep_index]:
            families.append(family)
    dense = np.full(choice_mask.shape[0], keep_index, np.int64)
    seeds = []
    for family in families:
        columns = np.array([v.split(":", 1)[0] == family for v in vocab])
        columns[keep_index] = True
        mask = choice_mask & columns
        if not (mask & ~(np.arange(len(vocab)) == keep_index)).any():
            continue  # no layer of this model takes the family
        seed = project(dense, mask, model, band, rng, spread=True, exact=exact)
        ratio = exact(seed) if exact is not None else None
        if ratio is not None and not band.low <= ratio <= band.high:
            logger.info("no %s-only plan reaches the band [%.2f, %.2f] (closest: %.3f of dense): no seed of it",
                        family, band.low, band.high, ratio)
            continue
        seeds.append(seed)
    return seeds
