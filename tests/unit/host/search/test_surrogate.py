"""Dyna-style imagined updates (host.search.surrogate): the accuracy surrogate, and imagination inside a real PPO
search on a real (tiny) model: the policy moves, the budget, step counter and real rollouts do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from host.search.surrogate import AccuracySurrogate, Imagination
from tests.unit.host.search.nets import ppo_flops_search


def _surrogate() -> AccuracySurrogate:
    # choices: 0 keep, 1 and 2 of family 0 (removing 25% and 75%), 3 of family 1 (removing 50%)
    return AccuracySurrogate(np.array([0.0, 0.25, 0.75, 0.5]), np.array([-1, 0, 0, 1]))


def test_the_surrogate_learns_which_layers_cost_accuracy():
    """Accuracy falls with what layers 0 and 1 lose, not with the others: fitted on 24 random plans, the
    surrogate ranks held-out plans by their true accuracy and says how far off it is."""
    rng = np.random.default_rng(0)
    surrogate = _surrogate()

    def truth(c: np.ndarray) -> float:
        return 0.9 - 0.5 * surrogate.reductions[c[0]] - 0.3 * surrogate.reductions[c[1]]

    train = [(c, truth(c)) for c in rng.integers(0, 4, (24, 6))]
    surrogate.fit(train)
    test = rng.integers(0, 4, (40, 6))
    predicted = np.array([surrogate.predict(c) for c in test])
    actual = np.array([truth(c) for c in test])
    assert np.corrcoef(predicted, actual)[0, 1] > 0.9
    assert surrogate.fitted_on == 24 and 0 <= surrogate.error < 0.05
    # a plan cutting only the unimportant layers is predicted far better than one cutting the important ones
    assert surrogate.predict(np.array([0, 0, 2, 2, 2, 2])) > surrogate.predict(np.array([2, 2, 0, 0, 0, 0])) + 0.2


def test_the_surrogate_without_spread_predicts_the_mean_and_stays_a_probability():
    surrogate = _surrogate()
    assert surrogate.predict(np.zeros(6, np.int64)) == 0.0  # nothing fitted: no information
    surrogate.fit([(np.zeros(6, np.int64), 0.8), (np.zeros(6, np.int64), 0.6)])
    assert surrogate.predict(np.ones(6, np.int64)) == pytest.approx(0.7)
    surrogate.fit([(np.zeros(6, np.int64), 1.0), (np.full(6, 2), 0.9)])
    assert 0.0 <= surrogate.predict(np.full(6, 3)) <= 1.0


def test_imagination_waits_for_enough_evaluated_plans():
    calls = []
    imagination = Imagination(_surrogate(), lambda: [(np.zeros(6, np.int64), 0.9)] * 3, lambda c: c,
                              lambda c, a: calls.append(1) or a, per_real=4)
    assert imagination.update(model=None, observation=None, real_rollout=4) is False
    assert not calls and imagination.rounds == 0


def _policy_vector(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.policy.parameters()])


@pytest.mark.parametrize("dyna", [0, 4])
def test_imagined_updates_move_the_policy_but_not_the_budget(evaluator, dyna, monkeypatch):
    """A flops-objective PPO search on the shape-checked net, with and without imagination: the same budget of
    evaluated candidates; with it, every round between real rollouts trains on 4x the rollout's plans, each
    projected and rewarded by the surrogate (none reaches the journal), and PPO's step counter counts real
    steps only."""
    from host.kinds import Phase
    from host.search.surrogate import Imagination as Real

    rounds, trained = [], []
    real_update = Real.update

    def spy(self, model, observation, real_rollout):
        before = _policy_vector(model)
        steps = model.num_timesteps
        done = real_update(self, model, observation, real_rollout)
        assert model.num_timesteps == steps  # imagined steps are not PPO's real steps
        rounds.append(done)
        trained.append(bool((before != _policy_vector(model)).any()))
        return done

    monkeypatch.setattr(Real, "update", spy)
    ppo_flops_search(evaluator, budget=10, dyna=dyna)
    journal = evaluator.journal
    assert journal.count(Phase.SEARCH, evaluated_only=True) == 10
    rows = journal.candidates(Phase.SEARCH)
    assert len(rows) <= 30
    if dyna == 0:
        assert rounds == []
    else:
        assert any(rounds) and all(trained[i] for i, done in enumerate(rounds) if done)
