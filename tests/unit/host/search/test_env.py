"""The Gymnasium env passes both env checkers, pads correctly and maps invalid choices to valid ones."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from host.search.env import Padding, PruningEnv, StepOutcome, pad_observation, project_choices
from tests.unit.host.search.graphs import chain_graph


def _evaluate(choices: np.ndarray) -> StepOutcome:
    return StepOutcome(reward=-float(np.mean(choices)), info={"choices": choices.tolist()})


def test_env_checkers_pass():
    env = PruningEnv(chain_graph(11), _evaluate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SB3 recommends flat obs; our custom policy handles the graph
        gym_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=False)


def test_padding_and_masks():
    graph = chain_graph(11)
    padding = Padding.fitting(graph)
    assert padding == Padding(16, 16)
    obs = pad_observation(graph, padding)
    assert obs["x"].shape == (16, 10)
    assert obs["node_mask"].sum() == 11
    assert obs["layer_mask"].sum() == 6 and obs["layer_mask"][0] == 1 and obs["layer_mask"][1] == 0
    assert int(obs["num_edges"][0]) == 11
    assert obs["choice_mask"][0].tolist() == [1, 1, 1, 0, 0, 0]
    assert obs["choice_mask"][1].tolist() == [1, 0, 0, 0, 0, 0]  # non-layer node: one legal choice
    with pytest.raises(ValueError):
        pad_observation(chain_graph(40), padding)


def test_project_choices_nearest_valid():
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1]], bool)
    assert project_choices(np.array([5, 3, 4]), mask).tolist() == [2, 5, 4]
    assert project_choices(np.array([1, 1, 0]), mask).tolist() == [1, 0, 0]  # tie at distance 1 -> lower


def test_step_evaluates_layer_choices_only():
    seen = []

    def evaluate(choices):
        seen.append(choices)
        return StepOutcome(1.5, {})

    env = PruningEnv(chain_graph(5), evaluate)
    env.reset(seed=0)
    action = np.array([5, 4, 2, 4, 1] + [3] * 11)
    _obs, reward, terminated, truncated, _info = env.step(action)
    assert reward == 1.5 and terminated and not truncated
    assert seen[0].tolist() == [2, 2, 1]  # nodes 0, 2, 4; node 0 forbids 5 -> nearest valid 2


def test_batched_env_gives_each_plan_its_own_reward():
    from host.search.env import BatchedPruningEnv

    graph = chain_graph(8)
    batches = []

    def evaluate_batch(plans):
        batches.append([p.copy() for p in plans])
        return [StepOutcome(float(p.sum()), {"n": i}) for i, p in enumerate(plans)]

    env = BatchedPruningEnv(graph, 3, evaluate_batch)
    obs = env.reset()
    assert obs["x"].shape[0] == 3
    actions = np.stack([np.full(env.action_space.shape, k) for k in (1, 2, 5)])
    _, rewards, dones, infos = env.step(actions)
    assert len(batches) == 1 and len(batches[0]) == 3  # evaluated together, in one call
    # layer 0 forbids choices >= 3: 5 becomes 2 there; each env's reward is the sum of its own plan
    layers = len(graph.layer_nodes)
    assert rewards.tolist() == [1.0 * layers, 2.0 * layers, 2 + 5.0 * (layers - 1)]
    assert dones.all() and [i["n"] for i in infos] == [0, 1, 2] and "terminal_observation" in infos[0]


def test_ppo_on_a_batched_env_keeps_its_rollout_near_n_steps_and_stops_on_skipped_plans(tmp_path):
    from host.search.config import PPOSettings
    from host.search.env import BatchedPruningEnv
    from host.search.ppo import BudgetCallback, ppo_model

    graph = chain_graph(8)
    calls = []

    def evaluate_batch(plans):
        calls.append(len(plans))
        skipped = len(calls) >= 3  # the third step's plans fall beyond the budget
        return [StepOutcome(0.0 if skipped else float(p.mean()), {"skipped": True} if skipped else {})
                for p in plans]

    class FakeSpace:  # what ppo_model reads of a SearchSpace
        keep_index = 0
        vocab = [str(i) for i in range(6)]

    class Journal:
        def count(self, *_a, **_k):
            return 0

    env = BatchedPruningEnv(graph, 3, evaluate_batch)
    model = ppo_model(env, FakeSpace(), PPOSettings(n_steps=4, batch_size=4, n_epochs=1, hidden=16), 0.0, 0,
                      tmp_path / "ppo.zip")
    assert model.n_envs == 3 and model.n_steps == 2 and model.batch_size == 6  # ceil(4 / 3) steps of 3 plans; 4 does not divide 6
    callback = BudgetCallback(Journal(), budget=100, max_steps=100, ppo_path=tmp_path / "ppo.zip",
                              report=lambda _n: None)
    model.learn(total_timesteps=100, callback=callback)
    # one full rollout (2 steps, saved), then the step with skipped plans ends learning before an update
    assert calls == [3, 3, 3] and (tmp_path / "ppo.zip").is_file() and model.num_timesteps == 9
