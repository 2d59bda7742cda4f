"""A cheap online model of a plan's cost relative to dense, fitted on the candidates measured so far.

Exporting and measuring a candidate is most of its cost (an ExecuTorch export alone takes ~6 s for
ResNet-20 on this machine, the accuracy check ~2 s), so the search uses this model to

* project a proposed plan onto the target band before spending anything on it (:mod:`host.search.projection`),
* predict the latency of candidates it does not measure, and measure only the promising ones.

The device measurement stays the ground truth: every measured candidate's reward uses its measured figure,
and the final models are measured again.

Model: ``ratio(plan) = 1 + sum_k w_k * s_k(plan)`` where ``s_k`` is the share of the dense model's MACs in
layers that took choice ``k``. The prior ``w_k = -cut_k`` (``cut_k``: MACs a choice removes per unit of
share, from one virtual count per choice) says "latency follows MACs"; ridge regression TOWARDS that prior
on the measured ratios learns how each pattern really realizes on the device (e.g. a kernel mix that runs
slower than dense gets ``w_k > 0``). With ~10 weights it is identifiable from a handful of measurements.

:attr:`CostModel.error` is how far off the model is on plans it has not seen: the median absolute
leave-one-out error of its samples (each measured plan predicted by the model fitted on the others). On a
shared host one noisy measurement moves the fit by tens of percent (LCNet-0.5: one plan measured at 0.96x of
dense where its MACs said 0.56x, and the model then put every channel-pruned plan the projection proposed at
0.70-0.73x, just over a 0.7x target), so the search uses it as the model's own uncertainty.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

MIN_RATIO = 0.02  # a plan never costs less than this share of dense (I/O, the classifier, overheads)


class CostModel:
    """Linear cost-ratio predictor over per-choice MAC shares; see the module docstring."""

    def __init__(self, shares: np.ndarray, choice_cuts: Mapping[int, float], num_choices: int,
                 accepting: np.ndarray | None = None, ridge: float = 0.02, keep_index: int = 0) -> None:
        """``accepting[k]``: MAC share of the layers where choice k is valid (default: all layers).
        ``keep_index``'s weight stays 0, so the dense plan costs exactly 1."""
        shares = np.asarray(shares, np.float64)
        if shares.ndim != 1 or not np.all(shares >= 0):
            raise ValueError("shares must be a 1-D array of non-negative MAC shares")
        self.shares = shares
        self.num_choices = int(num_choices)
        self.ridge = float(ridge)
        if accepting is None:
            accepting = np.full(self.num_choices, shares.sum())
        self.prior = np.zeros(self.num_choices)
        for index, cut in choice_cuts.items():
            # MACs removed per unit of share when the choice is applied everywhere it is valid
            self.prior[index] = -min(cut / accepting[index], 1.0) if accepting[index] > 0 else 0.0
        self.prior[keep_index] = 0.0
        self.keep_index = int(keep_index)
        self.free = np.arange(self.num_choices) != keep_index
        self.weights = self.prior.copy()
        self.fitted_on = 0
        self.error = 0.0  # median absolute leave-one-out error of the ratio (0: not fitted)

    @classmethod
    def from_space(cls, space, ridge: float = 0.02) -> CostModel:
        """The MAC-proportional prior for a :class:`~host.search.space.SearchSpace`."""
        shares = space.layer_shares()
        accepting = np.array([shares[space.choice_mask[:, k]].sum() for k in range(space.num_choices)])
        return cls(shares, space.choice_cuts(), space.num_choices, accepting, ridge, space.keep_index)

    def reduction(self, index: int) -> float:
        """Predicted cost removed per unit of MAC share by choice ``index`` (its aggressiveness)."""
        return -float(self.weights[index])

    def features(self, choices: np.ndarray) -> np.ndarray:
        """[K] share of the dense MACs in layers that took each choice (keep included)."""
        choices = np.asarray(choices, np.int64)
        if choices.shape != self.shares.shape:
            raise ValueError(f"expected {self.shares.shape[0]} choices, got shape {choices.shape}")
        return np.bincount(choices, weights=self.shares, minlength=self.num_choices)

    def predict(self, choices: np.ndarray) -> float:
        """Predicted cost of ``choices`` as a fraction of dense."""
        return max(MIN_RATIO, 1.0 + float(self.features(choices) @ self.weights))

    def fit(self, samples: Sequence[tuple[np.ndarray, float]]) -> None:
        """Ridge regression towards the prior on (choices, measured ratio) samples; dense is implicit (1.0)."""
        self.fitted_on = len(samples)
        self.error = 0.0
        if not samples:
            self.weights = self.prior.copy()
            return
        features = np.stack([self.features(c) for c, _ in samples])
        ratios = np.array([r for _, r in samples], np.float64)
        self.weights = self._solve(features, ratios)
        held_out = []
        for i in range(len(samples)):  # each sample predicted by the model fitted on the others
            others = np.arange(len(samples)) != i
            weights = self._solve(features[others], ratios[others])
            held_out.append(abs(max(MIN_RATIO, 1.0 + float(features[i] @ weights)) - ratios[i]))
        self.error = float(np.median(held_out))
        logger.debug("cost model fitted on %d samples (leave-one-out error %.3f): %s", len(samples), self.error,
                     np.round(self.weights, 3))

    def set_prior(self, samples: Sequence[tuple[np.ndarray, float]]) -> np.ndarray:
        """Move the prior to the ridge fit (towards the current prior) on ``samples``: (choices, ratio) pairs
        from another source than this run's measurements (:mod:`host.search.devicemodel`'s persisted model of
        the device, on a few realized plans). Later :meth:`fit` calls regularize towards it. Returns it."""
        if samples:
            features = np.stack([self.features(c) for c, _ in samples])
            ratios = np.array([r for _, r in samples], np.float64)
            self.prior = self._solve(features, ratios)
            self.prior[self.keep_index] = 0.0
        self.weights = self.prior.copy()
        return self.prior.copy()

    def restore_prior(self, prior: Sequence[float]) -> None:
        """A prior :meth:`set_prior` returned (kept in the journal, so a resumed run starts from the same one)."""
        prior = np.asarray(prior, np.float64)
        if prior.shape != self.prior.shape:
            raise ValueError(f"a stored prior has {prior.shape[0]} weights, the search space {self.num_choices}")
        self.prior = prior.copy()
        self.weights = prior.copy()

    def _solve(self, features: np.ndarray, ratios: np.ndarray) -> np.ndarray:
        """Weights fitted towards the prior on (features, ratio) rows (the prior itself for no rows)."""
        weights = self.prior.copy()
        if len(ratios) == 0:
            return weights
        y = ratios - 1.0 - features @ self.prior
        x = features[:, self.free]
        # solve (X^T X + lambda I) d = X^T y ; weights = prior + d (keep's weight stays 0)
        a = x.T @ x + self.ridge * np.eye(x.shape[1])
        weights[self.free] += np.linalg.solve(a, x.T @ y)
        return weights
