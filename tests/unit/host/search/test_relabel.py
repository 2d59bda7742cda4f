"""PPO learns from the plans that were evaluated (``PPOSettings.relabel``): what its rollout buffer stores is the
projected plan with that plan's log-probability, not the proposal the projection changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.unit.host.search.nets import ppo_flops_search


@pytest.mark.parametrize("relabel", [False, True])
def test_the_rollout_stores_the_evaluated_plans_with_their_log_probability(evaluator, relabel, monkeypatch):
    from stable_baselines3.common.buffers import DictRolloutBuffer

    from host.kinds import Phase
    from host.search import ppo

    models, stored = [], []
    build = ppo.ppo_model

    def keep_model(*args, **kwargs):
        models.append(build(*args, **kwargs))
        return models[-1]

    add = DictRolloutBuffer.add

    def record(self, obs, action, reward, episode_start, value, log_prob):
        obs_tensor = {k: torch.as_tensor(v) for k, v in obs.items()}
        with torch.no_grad():  # the log-probability the proposing policy gives the stored action
            _, expected, _ = models[-1].policy.evaluate_actions(obs_tensor, torch.as_tensor(action))
        stored.append((np.array(action), float(log_prob.reshape(-1)[0]), float(expected.reshape(-1)[0])))
        return add(self, obs, action, reward, episode_start, value, log_prob)

    monkeypatch.setattr(ppo, "ppo_model", keep_model)
    monkeypatch.setattr(DictRolloutBuffer, "add", record)
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
