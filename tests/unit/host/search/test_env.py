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
