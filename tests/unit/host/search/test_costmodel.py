"""The online cost model: MAC-proportional prior, ridge fit towards it, and what it learns from samples."""

from __future__ import annotations

import numpy as np
import pytest

from host.search.costmodel import MIN_RATIO, CostModel


def _model(ridge: float = 0.01) -> CostModel:
    # 4 layers with MAC shares 0.4/0.3/0.2/0.1; choice 0 keep, 1 removes a third, 2 removes two thirds
    return CostModel(np.array([0.4, 0.3, 0.2, 0.1]), {0: 0.0, 1: 1 / 3, 2: 2 / 3}, 3, ridge=ridge)


def test_prior_follows_macs():
    model = _model()
    assert model.predict(np.array([0, 0, 0, 0])) == pytest.approx(1.0)
    assert model.predict(np.array([1, 1, 1, 1])) == pytest.approx(2 / 3)
    assert model.predict(np.array([2, 0, 0, 0])) == pytest.approx(1 - 0.4 * 2 / 3)
    assert model.reduction(2) > model.reduction(1) > model.reduction(0) == 0


def test_accepting_share_scales_the_prior():
    # choice 1 is valid only in the first layer (share 0.4) and removed 0.2 of the model's MACs there
    model = CostModel(np.array([0.4, 0.6]), {0: 0.0, 1: 0.2}, 2, accepting=np.array([1.0, 0.4]))
    assert model.predict(np.array([1, 0])) == pytest.approx(0.8)


def test_fit_learns_a_pattern_that_runs_slower_than_its_macs():
    model = _model()
    rng = np.random.default_rng(0)
    truth = np.array([0.0, 0.25, -0.5])  # choice 1 makes a layer SLOWER on this "device"
    samples = []
    for _ in range(12):
        choices = rng.integers(0, 3, size=4)
        samples.append((choices, 1.0 + float(model.features(choices) @ truth)))
    model.fit(samples)
    assert model.weights[1] > 0.1  # learned: choice 1 costs more than keep
    assert model.predict(np.array([2, 2, 2, 2])) == pytest.approx(0.5, abs=0.05)
    assert model.fitted_on == 12


def test_fit_without_samples_is_the_prior_and_prediction_is_floored():
    model = _model()
    model.fit([])
    np.testing.assert_allclose(model.weights, model.prior)
    crushed = CostModel(np.array([1.0]), {0: 0.0, 1: 1.0}, 2)
    assert crushed.predict(np.array([1])) == MIN_RATIO


def test_bad_input():
    with pytest.raises(ValueError):
        CostModel(np.array([[0.5]]), {}, 2)
    with pytest.raises(ValueError):
        _model().features(np.array([0, 1]))


def test_error_is_the_held_out_error_of_the_fit():
    """Each measured plan predicted by the model fitted on the others: a noisy sample shows up as error."""
    shares = np.array([0.5, 0.5])
    model = CostModel(shares, {1: 1.0}, 2, keep_index=0)
    assert model.error == 0.0
    halves = [(np.array([1, 0]), 0.5), (np.array([0, 1]), 0.5), (np.array([1, 1]), 0.02)]
    model.fit(halves)  # latency follows MACs: the prior predicts every sample
    assert model.error == pytest.approx(0.0, abs=0.02)
    model.fit([*halves[:2], (np.array([1, 1]), 0.9)])  # one plan measured far slower than its MACs
    assert model.error > 0.1


def test_a_flops_evaluator_keeps_the_mac_prior(evaluator):
    """Under the FLOPs objective the evaluator's cost model is never fitted to the evaluated plans' MAC ratios: the
    projection walks with the MAC-proportional prior and corrects it by exact counts (fitted to a few dozen counted
    plans, the model misled that walk; see CandidateEvaluator.refit_cost_model)."""
    from host.kinds import Phase

    space = evaluator.space
    prior = evaluator.cost_model.weights.copy()
    evaluator.evaluate_dense()
    rng = np.random.default_rng(0)
    kernel = np.array([name.startswith("kernel:") for name in space.vocab])
    for _ in range(4):  # kernel patterns keep every channel: plans of this net that build
        plan = space.dense_choices()
        for i, valid in enumerate(space.choice_mask):
            options = np.flatnonzero(valid & kernel)
            if options.size:
                plan[i] = rng.choice(options)
        evaluator.evaluate(plan, phase=Phase.SEARCH)
    assert sum(r.valid for r in evaluator.journal.candidates(Phase.SEARCH)) >= 2
    assert evaluator.cost_model.fitted_on == 0 and np.array_equal(evaluator.cost_model.weights, prior)
