"""The GNN policy: per-node actor, one policy object for graphs of any size, trained edge embeddings,
save/load across models, and a short PPO run through SB3."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from host.errors import SearchError
from host.search.env import Padding, PruningEnv, StepOutcome, pad_observation
from host.search.policy import (
    GraphActorCriticPolicy,
    load_policy_weights,
    policy_kwargs,
    read_policy_file,
    save_policy,
)
from tests.unit.host.search.graphs import chain_graph

VOCAB = ["keep", "a", "b", "c", "d", "drop"]


def _prefer_high(choices: np.ndarray) -> StepOutcome:
    return StepOutcome(float(np.mean(choices)), {})


def _ppo(graph, seed=0):
    from stable_baselines3.common.logger import Logger

    env = PruningEnv(graph, _prefer_high)
    model = PPO(
        GraphActorCriticPolicy, env, n_steps=16, batch_size=8, n_epochs=2, learning_rate=3e-3,
        policy_kwargs=policy_kwargs(hidden=32), seed=seed, device="cpu",
    )
    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default makes an empty $TMPDIR/SB3-<time>
    return model


def _obs_tensor(graph, padding):
    return {k: torch.as_tensor(v).unsqueeze(0) for k, v in pad_observation(graph, padding).items()}


def test_same_policy_object_runs_on_two_graph_sizes():
    small, large = chain_graph(7), chain_graph(29, seed=3)
    policy = _ppo(small).policy
    fx = policy.features_extractor
    # the GNN and the heads have no node-count dependent parameter: run them on both graphs directly
    for graph, padding in ((small, Padding.fitting(small)), (large, Padding.fitting(large))):
        obs = _obs_tensor(graph, padding)
        features = fx(obs)
        logits = policy.action_net(policy.mlp_extractor.forward_actor(features)).reshape(padding.max_nodes, 6)
        assert logits.shape == (padding.max_nodes, 6)
        layer0 = int(graph.layer_nodes[0])
        assert torch.all(logits[layer0, 3:] < -1e3)  # invalid choices masked
        assert torch.all(logits[1, 1:] < -1e3)  # non-layer node: only choice 0
        assert policy.value_net(policy.mlp_extractor.forward_critic(features)).shape == (1, 1)


def test_node_features_change_the_output():
    graph = chain_graph(9)
    policy = _ppo(graph).policy
    padding = Padding.fitting(graph)
    a = policy.extract_features(_obs_tensor(graph, padding))
    other = chain_graph(9, seed=5)
    b = policy.extract_features(_obs_tensor(other, padding))
    assert not torch.allclose(a, b)


def test_ppo_learns_and_trains_edge_embeddings():
    graph = chain_graph(9)
    model = _ppo(graph)
    emb_before = model.policy.features_extractor.encoder.edge_embedding.weight.detach().clone()
    head_before = model.policy.action_net.head[-1].weight.detach().clone()
    model.learn(total_timesteps=64)
    assert not torch.allclose(emb_before, model.policy.features_extractor.encoder.edge_embedding.weight)
    assert not torch.allclose(head_before, model.policy.action_net.head[-1].weight)


def test_save_and_load_into_a_policy_for_another_model(tmp_path):
    trained = _ppo(chain_graph(9))
    path = tmp_path / "policy.pt"
    save_policy(trained.policy, path, VOCAB)
    other = _ppo(chain_graph(37, seed=2), seed=1)  # different node count -> different padding
    load_policy_weights(other.policy, read_policy_file(path), VOCAB)
    for name, value in trained.policy.state_dict().items():
        if not name.startswith("mlp_extractor"):
            assert torch.equal(value, other.policy.state_dict()[name]), name
    with pytest.raises(SearchError, match="trained with"):
        load_policy_weights(other.policy, read_policy_file(path), VOCAB[:-1] + ["other"])
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(SearchError):
        read_policy_file(tmp_path / "bad.pt")
    with pytest.raises(SearchError, match="does not exist"):
        read_policy_file(tmp_path / "missing.pt")


def test_one_policy_on_two_real_model_graphs():
    """ResNet-20 and MobileNetV2 graphs from host.graph: one policy object scores both, per layer."""
    from host.models import create_model
    from host.search.space import SearchSpace

    x = torch.randn(1, 1, 16, 16)
    spaces = [SearchSpace(create_model(name, in_channels=1, image_size=16, width=0.5).eval(), x)
              for name in ("resnet20", "mobilenetv2")]
    assert spaces[0].observation().num_nodes != spaces[1].observation().num_nodes
    # SB3's action distribution has a fixed width (N_max); any graph up to N_max nodes fits the same object,
    # and the weights themselves carry to any N_max (see test_save_and_load_into_a_policy_for_another_model)
    padding = Padding.fitting(spaces[1].observation())
    env = PruningEnv(spaces[0].observation(), _prefer_high, padding)
    policy = PPO(GraphActorCriticPolicy, env, n_steps=8, batch_size=8, policy_kwargs=policy_kwargs(hidden=32),
                 device="cpu").policy
    for space in spaces:
        graph = space.observation()
        obs = _obs_tensor(graph, padding)
        with torch.no_grad():
            actions, values, _ = policy(obs, deterministic=True)
        assert actions.shape == (1, padding.max_nodes) and values.shape == (1, 1)
        chosen = actions[0].numpy()[graph.layer_nodes]
        assert all(space.choice_mask[i, c] for i, c in enumerate(chosen))  # masked logits: only valid choices
        plan, names = space.decode(chosen)
        assert set(names) == set(space.layer_names)


def test_a_near_deterministic_policy_learns_from_plans_it_would_never_propose():
    """A policy whose logits are hundreds apart (as pretraining over several models left one) gives a relabelled
    plan it did not propose a log-probability hundreds of nats down; PPO's update on such plans must stay finite
    (unbounded logits overflowed the importance ratio and turned every weight into NaN) and keep the bound."""
    from host.search.policy import LOGIT_CAP, soft_cap
    from host.search.ppo import train_on_imagined

    graph = chain_graph(12)
    model = _ppo(graph)
    last = model.policy.action_net.head[-1]
    with torch.no_grad():  # one choice far ahead on every node, the rest far behind: a collapsed policy
        last.weight.normal_(0.0, 30.0)
        last.bias.copy_(torch.linspace(150.0, -150.0, last.bias.numel()))
    rng = np.random.default_rng(0)
    mask = graph.choice_mask

    def rare_plan(_proposed: np.ndarray) -> StepOutcome:  # valid choices drawn uniformly: nothing the policy favours
        plan = [int(rng.choice(np.flatnonzero(row))) for row in mask]
        return StepOutcome(float(rng.normal(90.0, 2.0)), {"choices": plan})

    obs = _obs_tensor(graph, Padding.fitting(graph))

    def least_likely() -> float:  # the lowest log-probability of a valid choice, over the layers
        with torch.no_grad():
            nodes = model.policy.get_distribution(obs).distribution
        return min(float(nodes[int(n)].logits[0][torch.as_tensor(m)].min())
                   for n, m in zip(graph.layer_nodes, mask, strict=True))

    assert least_likely() < -30  # collapsed: such a plan is far less likely than 1e-13
    for _ in range(3):
        train_on_imagined(model, graph, rare_plan, 16, relabel=True)
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())
    assert -2 * LOGIT_CAP - 5 < least_likely() < -30
    # the bound itself: unchanged inside the free range, never past the cap
    x = torch.tensor([-500.0, -15.0, -0.77, 0.0, 3.0, 500.0])
    capped = soft_cap(x)
    assert capped[2:5].tolist() == x[2:5].tolist() and capped.abs().max() <= LOGIT_CAP


def test_policy_spread_tells_a_fresh_policy_from_a_decided_one():
    from host.search.ppo import policy_spread

    graph = chain_graph(12)
    model = _ppo(graph)
    fresh = policy_spread(model, graph, keep_index=0)
    uniform = float(np.mean(np.log(graph.choice_mask.sum(axis=1))))
    assert fresh["uniform_entropy"] == pytest.approx(uniform)
    assert fresh["entropy"] > 0.9 * uniform and fresh["top_probability"] < 0.5  # a near-uniform start
    assert fresh["keep_probability"] < 0.5
    with torch.no_grad():  # one choice (the second) far ahead of the others on every node
        model.policy.action_net.head[-1].bias.copy_(torch.tensor([-12.0, 12.0] + [-12.0] * (len(VOCAB) - 2)))
    decided = policy_spread(model, graph, keep_index=0)
    assert decided["entropy"] < 0.01 and decided["top_probability"] > 0.99 and decided["keep_probability"] < 0.01
    assert policy_spread(model, graph, keep_index=1)["keep_probability"] > 0.99
