"""Dyna-style imagined updates: many cheap PPO updates per real evaluation, against a surrogate reward.

A real candidate costs seconds (recovery steps, an accuracy run, an export, a device measurement), so a search
of tens of candidates gives PPO a handful of updates. Between two real rollouts, :class:`Imagination` draws
plans from the current policy, projects them with the search's cost model, and rewards each with the run's own reward
function fed by two models fitted on what the run has evaluated so far:

- the accuracy :class:`AccuracySurrogate` (ridge regression of the recovered accuracy on how much of each
  layer the plan removes, plus how much each pattern family removes; its leave-one-out error is logged);
- the latency the evaluator already predicts for an unmeasured plan (the per-run cost model, fitted on the
  measured candidates), or for the FLOPs objective the plan's MAC ratio from the MAC-proportional prior.

PPO then trains on those imagined rollouts (:func:`host.search.ppo.train_on_imagined`: its own buffer; the
real rollout buffer, step counter and observation are left as they were). Every real evaluation refits the surrogate, so its errors are corrected
by the next rollout. ``PPOSettings.dyna`` (``--dyna N``) is the number of imagined plans per real one;
0 (the default) turns it off.

Best-of-k screening (:class:`Screen`, ``PPOSettings.screen``, ``--screen K``) spends host time instead: each real
step evaluates the best of K plans drawn from the policy, judged by a cheap adaptive-BN proxy of their accuracy
(:class:`ProxyAccuracy`), which ranks plans better than the ridge surrogate (``benchmarks/proxy_bench.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

MIN_SAMPLES = 4  # fewer evaluated plans than this: no imagination (nothing to fit)
RIDGE_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
CREDIT_PLANS = 512  # the plans LayerCredit fits on: the latest ones


class AccuracySurrogate:
    """Ridge regression of accuracy on per-layer removal shares and per-family totals.

    ``reductions[k]``: share of a layer's MACs choice ``k`` removes (0 for keep); ``families[k]``: the family
    index of choice ``k`` (-1 for keep). The penalty is chosen by leave-one-out error over a small grid.
    """

    def __init__(self, reductions: np.ndarray, families: np.ndarray) -> None:
        self.reductions = np.asarray(reductions, np.float64)
        self.families = np.asarray(families, np.int64)
        self.num_families = int(self.families.max()) + 1 if (self.families >= 0).any() else 0
        self.fitted_on = 0
        self.error = float("nan")  # median absolute leave-one-out error of the accuracy
        self._mean_x: np.ndarray | None = None
        self._scale: np.ndarray | None = None
        self._mean_y = 0.0
        self._weights: np.ndarray | None = None

    def features(self, choices: np.ndarray) -> np.ndarray:
        """[L + F] removed share of each layer, then each family's mean removed share over the layers."""
        choices = np.asarray(choices, np.int64)
        per_layer = self.reductions[choices]
        per_family = np.zeros(self.num_families)
        fam = self.families[choices]
        for f in range(self.num_families):
            per_family[f] = per_layer[fam == f].sum() / len(choices)
        return np.concatenate([per_layer, per_family])

    def fit(self, samples: Sequence[tuple[np.ndarray, float]]) -> None:
        """Fit on (choices, accuracy) pairs."""
        self.fitted_on = len(samples)
        if not samples:
            self._weights = None
            return
        x = np.stack([self.features(c) for c, _ in samples])
        y = np.array([a for _, a in samples], np.float64)
        self._mean_x = x.mean(axis=0)
        scale = x.std(axis=0)
        self._scale = np.where(scale > 1e-9, scale, 1.0)
        self._mean_y = float(y.mean())
        z = (x - self._mean_x) / self._scale
        yc = y - self._mean_y
        best = None
        for ridge in RIDGE_GRID:
            err = _loo_error(z, yc, ridge)
            if best is None or err < best[0]:
                best = (err, ridge)
        self.error, ridge = best
        self._weights = _ridge(z, yc, ridge)

    def predict(self, choices: np.ndarray) -> float:
        """Predicted accuracy in [0, 1] (the mean of the samples before any fit with variance)."""
        if self._weights is None:
            return float(np.clip(self._mean_y, 0.0, 1.0))
        z = (self.features(choices) - self._mean_x) / self._scale
        return float(np.clip(self._mean_y + z @ self._weights, 0.0, 1.0))


class LayerCredit:
    """An additive model of a plan's reward, one weight per (node, choice), fitted by ridge regression on the plans
    a learner has trained on: what PPO's per-layer credit (:class:`host.search.ppo.LayerCreditPPO`) subtracts.

    With it, layer ``l``'s advantage in a plan ``a`` of reward ``R`` is ``R - b_l`` with the counterfactual baseline
    ``b_l = Q(a) - w[l, a_l] + E_pi_l[w[l, .]]``: the reward the model expects had layer ``l`` drawn its choice
    afresh from the policy. ``b_l`` does not depend on ``a_l``, so the policy gradient stays unbiased whatever the
    fit; where the fit is good the other layers' share of ``R`` cancels and what is left is ``l``'s own. Fitted only
    on plans of earlier updates, never on the ones it is used for."""

    def __init__(self) -> None:
        self.plans: dict[bytes, tuple[np.ndarray, float]] = {}
        self.weights: np.ndarray | None = None  # [N, K]
        self.intercept = 0.0
        self.error = float("nan")  # median absolute leave-one-out error of the fit, in reward units

    def add(self, actions: np.ndarray, rewards: np.ndarray) -> None:
        """Remember plans (``actions`` [B, N] per-node choices) and their rewards; a plan seen again keeps its
        latest reward, and only the latest :data:`CREDIT_PLANS` plans are kept (the fit's cost grows as their cube)."""
        for a, r in zip(np.asarray(actions, np.int64), np.asarray(rewards, np.float64).reshape(-1), strict=True):
            self.plans.pop(a.tobytes(), None)
            self.plans[a.tobytes()] = (a, float(r))
        for key in list(self.plans)[:max(0, len(self.plans) - CREDIT_PLANS)]:
            del self.plans[key]

    def fit(self, num_choices: int) -> bool:
        """Fit on every remembered plan (penalty by leave-one-out error); False with fewer than MIN_SAMPLES."""
        if len(self.plans) < MIN_SAMPLES:
            self.weights = None
            return False
        actions = np.stack([a for a, _ in self.plans.values()])
        y = np.array([r for _, r in self.plans.values()])
        x = self._one_hot(actions, num_choices)
        mean_x = x.mean(axis=0)
        z = x - mean_x
        self.intercept = float(y.mean())
        yc = y - self.intercept
        self.error, ridge = min((_loo_error(z, yc, r), r) for r in RIDGE_GRID)
        w = _ridge(z, yc, ridge)
        self.intercept -= float(mean_x @ w)
        self.weights = w.reshape(actions.shape[1], num_choices)
        return True

    @staticmethod
    def _one_hot(actions: np.ndarray, num_choices: int) -> np.ndarray:
        b, n = actions.shape
        x = np.zeros((b, n * num_choices))
        x[np.arange(b)[:, None], np.arange(n)[None, :] * num_choices + actions] = 1.0
        return x

    def advantages(self, actions: np.ndarray, rewards: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """[B, N] per-node advantages ``R - b_l`` of plans ``actions`` [B, N] with rewards [B] under the policy's
        per-node choice probabilities ``probs`` [B, N, K] (see the class docstring). Needs a fit."""
        assert self.weights is not None
        actions = np.asarray(actions, np.int64)
        rows = np.arange(actions.shape[1])[None, :]
        chosen = self.weights[rows, actions]  # [B, N]
        expected = (probs * self.weights[None]).sum(axis=-1)  # [B, N]
        q = self.intercept + chosen.sum(axis=1)
        residual = np.asarray(rewards, np.float64).reshape(-1) - q
        return residual[:, None] + chosen - expected


def _ridge(z: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    # the dual form: n samples are fewer than the features here
    n = z.shape[0]
    return z.T @ np.linalg.solve(z @ z.T + ridge * np.eye(n), y)


def _loo_error(z: np.ndarray, y: np.ndarray, ridge: float) -> float:
    """Median absolute leave-one-out error of kernel ridge (closed form: residual / (1 - h_ii))."""
    n = z.shape[0]
    if n < 2:
        return float("inf")
    k = z @ z.T
    hat = k @ np.linalg.inv(k + ridge * np.eye(n))
    residual = y - hat @ y
    leverage = np.clip(1.0 - np.diag(hat), 1e-6, None)
    return float(np.median(np.abs(residual / leverage)))


class Imagination:
    """Imagined PPO updates for one search (see the module docstring).

    ``samples()`` returns the run's evaluated (choices, accuracy) pairs; ``reward(choices, accuracy)`` is the
    run's reward of a projected plan with a predicted accuracy; ``project(choices)`` the search's projection.
    """

    def __init__(self, surrogate: AccuracySurrogate, samples: Callable[[], list[tuple[np.ndarray, float]]],
                 project: Callable[[np.ndarray], np.ndarray], reward: Callable[[np.ndarray, float], float],
                 per_real: int, relabel: bool = False) -> None:
        self.surrogate, self.samples, self.project, self.reward = surrogate, samples, project, reward
        self.per_real = int(per_real)
        self.relabel = relabel  # PPO learns from the projected plans (host.search.ppo.relabel_evaluated)
        self.rounds = 0

    def outcome(self, choices: np.ndarray):
        """The imagined step: the projected plan's surrogate reward."""
        from host.search.env import StepOutcome

        projected = self.project(choices)
        return StepOutcome(self.reward(projected, self.surrogate.predict(projected)),
                           {"imagined": True, "choices": projected.tolist()})

    def update(self, model, observation, real_rollout: int) -> bool:
        """Fit the surrogate, then train ``model`` (SB3 PPO) on ``per_real * real_rollout`` imagined plans
        (:func:`host.search.ppo.train_on_imagined`). False (nothing done) when the run has evaluated fewer than
        :data:`MIN_SAMPLES` plans."""
        from host.search.ppo import train_on_imagined

        data = self.samples()
        if len(data) < MIN_SAMPLES or self.per_real <= 0:
            return False
        self.surrogate.fit(data)
        steps = self.per_real * real_rollout
        rewards = train_on_imagined(model, observation, self.outcome, steps, relabel=self.relabel, stream="surrogate")
        self.rounds += 1
        logger.info("imagined %d plans on a surrogate fitted to %d (accuracy leave-one-out error %.3f): mean "
                    "reward %.4f, best %.4f", steps, len(data), self.surrogate.error, float(rewards.mean()),
                    float(rewards.max()))
        return True


class ProxyAccuracy:
    """Predicted recovered accuracy of a plan from a cheap proxy (``proxy(choices)``: the adaptive-BN accuracy of
    :meth:`host.search.scorer.PlanScorer.proxy_accuracy`, None for a plan that cannot be built), mapped onto the
    recovered accuracy by a least-squares line fitted on the plans the run has evaluated (``samples()``: (choices,
    accuracy) pairs). Proxies are memoized per plan. Where the fitted slope is not positive the proxy says nothing
    on this run and every plan is predicted the samples' mean accuracy."""

    def __init__(self, proxy: Callable[[np.ndarray], float | None],
                 samples: Callable[[], list[tuple[np.ndarray, float]]]) -> None:
        self.proxy, self.samples = proxy, samples
        self.fitted_on = 0
        self.slope, self.intercept = 0.0, 0.0
        self._memo: dict[bytes, float | None] = {}

    def value(self, choices: np.ndarray) -> float | None:
        """The plan's proxy (memoized)."""
        key = np.asarray(choices, np.int64).tobytes()
        if key not in self._memo:
            self._memo[key] = self.proxy(np.asarray(choices, np.int64))
        return self._memo[key]

    def update(self) -> bool:
        """Refit the line when the run has evaluated new plans; False while fewer than :data:`MIN_SAMPLES` were."""
        data = self.samples()
        if len(data) < MIN_SAMPLES:
            return False
        if len(data) != self.fitted_on:
            pairs = [(self.value(c), a) for c, a in data]
            x = np.array([p for p, _ in pairs if p is not None], np.float64)
            y = np.array([a for p, a in pairs if p is not None], np.float64)
            self.fitted_on = len(data)
            self.slope, self.intercept = 0.0, float(y.mean()) if len(y) else 0.0
            if len(x) >= MIN_SAMPLES and x.std() > 1e-9:
                slope, intercept = np.polyfit(x, y, 1)
                if slope > 0:
                    self.slope, self.intercept = float(slope), float(intercept)
        return True

    def predict(self, choices: np.ndarray) -> float | None:
        """Predicted recovered accuracy in [0, 1]; None for a plan that cannot be built."""
        value = self.value(choices)
        if value is None:
            return None
        return float(np.clip(self.intercept + self.slope * value, 0.0, 1.0))


class Screen:
    """Best of ``k`` policy proposals by a cheap accuracy predictor, before a real evaluation is spent
    (``PPOSettings.screen``, ``--screen K``).

    Each real step, the policy's own proposal and ``k - 1`` more plans drawn from the current policy (``draw(n)``)
    are projected with the cost model alone and rewarded by the run's reward function (``reward(choices,
    accuracy)``) with the ``predictor``'s accuracy (:class:`ProxyAccuracy`); the proposal with the best predicted
    reward is the one evaluated. Until the predictor is ready (:data:`MIN_SAMPLES` evaluated plans) the proposal
    passes unchanged. The chosen plan is not a plain draw of the policy, so PPO learns from it with its own
    log-probability (the search turns relabelling on, :func:`host.search.ppo.relabel_evaluated`).
    """

    def __init__(self, predictor: ProxyAccuracy, draw: Callable[[int], list[np.ndarray]],
                 project: Callable[[np.ndarray], np.ndarray], reward: Callable[[np.ndarray, float], float],
                 k: int, collect: bool = False) -> None:
        """``collect``: keep the screened plans that were not evaluated, for :meth:`learn`."""
        self.predictor, self.draw, self.project, self.reward = predictor, draw, project, reward
        self.k = int(k)
        self.collect = collect
        self.screened = 0  # steps where the predictor chose
        self.replaced = 0  # ... and chose another plan than the policy's own proposal
        # the screened plans that were not evaluated, (projected choices, predicted reward), since the last
        # :meth:`learn`: PPO can train on them as imagined steps
        self.pending: list[tuple[np.ndarray, float]] = []
        self.learned = 0  # plans PPO trained on by :meth:`learn`

    def choose(self, proposal: np.ndarray) -> np.ndarray:
        """The plan to evaluate in place of ``proposal`` (per-layer choices): the best of the pool as projected for
        screening (the search's own projection then checks it, e.g. on the exact MAC count)."""
        if self.k <= 1 or not self.predictor.update():
            return proposal
        pool = [np.asarray(proposal, np.int64), *(np.asarray(c, np.int64) for c in self.draw(self.k - 1))]
        projected = [self.project(choices) for choices in pool]
        scores = []
        for choices in projected:
            accuracy = self.predictor.predict(choices)
            scores.append(-np.inf if accuracy is None else self.reward(choices, accuracy))
        best = int(np.argmax(scores))
        if self.collect:
            from host.search.candidate import INVALID_REWARD

            self.pending += [(choices, INVALID_REWARD if score == -np.inf else float(score))
                             for i, (choices, score) in enumerate(zip(projected, scores, strict=True)) if i != best]
        self.screened += 1
        self.replaced += best != 0
        logger.debug("screened %d proposals: predicted reward %.4f (the policy's own %.4f)", len(pool), scores[best],
                     scores[0])
        return projected[best]

    def learn(self, model, observation) -> bool:
        """One PPO update of ``model`` on the screened plans that were not evaluated, each rewarded as predicted
        (:func:`host.search.ppo.train_on_plans`; ``PPOSettings.screen_learn``): the proxies screening has paid for
        teach the policy too, K - 1 plans per real one at no extra proxy. False when there is nothing to learn."""
        from host.search.ppo import train_on_plans

        plans, self.pending = self.pending, []
        if not plans:
            return False
        rewards = train_on_plans(model, observation, plans, stream="screen")
        self.learned += len(plans)
        logger.info("learned from %d screened plans: mean predicted reward %.4f, best %.4f", len(plans),
                    float(rewards.mean()), float(rewards.max()))
        return True


def choice_tables(space, mac_model) -> tuple[np.ndarray, np.ndarray]:
    """(reductions, families) of every vocabulary choice for :class:`AccuracySurrogate`: the share of a layer's
    MACs the choice removes (the MAC-proportional cost model's prior) and its family's index (-1 for keep)."""
    reductions = np.array([mac_model.reduction(k) for k in range(space.num_choices)], np.float64)
    reductions = np.clip(reductions, 0.0, 1.0)
    names = sorted({f for f, _ in space.vocab_ids} - {space.vocab_ids[space.keep_index][0]})
    families = np.array([-1 if k == space.keep_index else names.index(space.vocab_ids[k][0])
                         for k in range(space.num_choices)], np.int64)
    return reductions, families
