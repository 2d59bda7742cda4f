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
from dataclasses import dataclass

import numpy as np

from host.search.costmodel import CostModel

logger = logging.getLogger(__name__)


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
            rng: np.random.Generator) -> np.ndarray:
    """``choices`` moved, one layer and one step of aggressiveness at a time, until the predicted cost is
    inside ``band`` (or no move is left). Layers are picked at random; the rest of the plan is kept."""
    out = np.asarray(choices, np.int64).copy()
    # each layer's valid choices from the least to the most aggressive, as the model currently believes
    ladders = []
    for valid in choice_mask:
        idx = np.flatnonzero(valid)
        ladders.append(list(idx[np.argsort([model.reduction(k) for k in idx], kind="stable")]))
    for _ in range(8 * len(out) + 8):
        ratio = model.predict(out)
        if band.low <= ratio <= band.high:
            break
        tighten = ratio > band.high
        movable = [i for i, ladder in enumerate(ladders)
                   if (ladder.index(out[i]) < len(ladder) - 1 if tighten else ladder.index(out[i]) > 0)]
        if not movable:
            break
        i = movable[int(rng.integers(len(movable)))]
        step = 1 if tighten else -1
        out[i] = ladders[i][ladders[i].index(out[i]) + step]
    return out
