"""PPO learns from the plans that were evaluated (``PPOSettings.relabel``): what its rollout buffer stores is the
projected plan with that plan's log-probability, not the proposal the projection changed."""

from __future__ import annotations

import pytest

from tests.unit.host.search.nets import ppo_flops_search, record_rollouts


@pytest.mark.parametrize("relabel", [False, True])
def test_the_rollout_stores_the_evaluated_plans_with_their_log_probability(evaluator, relabel, monkeypatch):
    from host.kinds import Phase

    stored = record_rollouts(monkeypatch)
    ppo_flops_search(evaluator, budget=10, relabel=relabel)
    journal, space = evaluator.journal, evaluator.space
    evaluated = {tuple(evaluator.choices_of(r)) for r in journal.candidates(Phase.SEARCH)}
    plans = [tuple(action.reshape(-1)[space.layer_nodes]) for action, _, _ in stored]
    assert len(stored) >= 4
    if relabel:
        assert all(plan in evaluated for plan in plans)
        assert all(got == pytest.approx(want, abs=1e-5) for _, got, want in stored)
    else:  # the proposals: the projection changed some of them (what makes relabelling matter here)
        assert any(plan not in evaluated for plan in plans)
