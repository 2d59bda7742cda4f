"""Per-layer credit for PPO (``PPOSettings.credit = "layer"``): the additive reward model and its counterfactual
baseline (host.search.surrogate.LayerCredit), and the learner that uses it (host.search.ppo.LayerCreditPPO)."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.logger import Logger

from host.search.env import Padding, PruningEnv, StepOutcome, pad_observation
from host.search.policy import GraphActorCriticPolicy, policy_kwargs
from host.search.ppo import LayerCreditPPO, ParentCredit, ParentCreditPPO, train_on_imagined
from host.search.surrogate import LayerCredit
from tests.unit.host.search.graphs import chain_graph
from tests.unit.host.search.nets import ppo_flops_search


def _plans(rng, count, nodes=12, k=5):
    return rng.integers(0, k, size=(count, nodes))


def test_the_additive_model_finds_each_layers_share_of_the_reward():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(12, 5))
    credit = LayerCredit()
    plans = _plans(rng, 200)
    credit.add(plans, truth[np.arange(12), plans].sum(axis=1) + rng.normal(0, 0.05, 200))
    assert credit.fit(5)
    # weights are defined up to a constant per layer: compare them centred
    fitted = credit.weights - credit.weights.mean(axis=1, keepdims=True)
    centred = truth - truth.mean(axis=1, keepdims=True)
    assert np.corrcoef(fitted.ravel(), centred.ravel())[0, 1] > 0.95
    assert credit.error < 0.3


def test_a_layers_baseline_does_not_depend_on_its_own_choice():
    """Whatever the fit (here rewards no additive model explains), two plans that differ in one layer only get that
    layer's advantages apart by exactly their rewards' difference: the baseline is the same, so the gradient
    estimate is unbiased."""
    rng = np.random.default_rng(1)
    credit = LayerCredit()
    plans = _plans(rng, 30)
    credit.add(plans, rng.normal(size=30) + (plans[:, 0] * plans[:, 1] % 3))  # an interaction the model lacks
    assert credit.fit(5)
    probs = rng.dirichlet(np.ones(5), size=(2, 12))
    a = _plans(rng, 1)[0]
    b = a.copy()
    b[4] = (a[4] + 2) % 5
    rewards = np.array([1.7, -0.4])
    advantages = credit.advantages(np.stack([a, b]), rewards, np.stack([probs[0], probs[0]]))
    assert advantages[0, 4] - advantages[1, 4] == pytest.approx(rewards[0] - rewards[1])
    # another layer's advantage does move with layer 4's choice: the model credits it to layer 4, not to them
    assert advantages[0, 7] - advantages[1, 7] != pytest.approx(rewards[0] - rewards[1])


def test_the_model_keeps_the_latest_plans(monkeypatch):
    from host.search import surrogate

    monkeypatch.setattr(surrogate, "CREDIT_PLANS", 4)
    credit = LayerCredit()
    plans = np.arange(6)[:, None] * np.ones((1, 3), np.int64)
    credit.add(plans[:5], np.arange(5.0))
    credit.add(plans[1:2], np.array([9.0]))  # seen again: now the latest, with its new reward
    assert [int(a[0]) for a, _ in credit.plans.values()] == [2, 3, 4, 1]
    assert credit.plans[plans[1].tobytes()][1] == 9.0


def test_too_few_plans_fit_nothing():
    credit = LayerCredit()
    credit.add(_plans(np.random.default_rng(2), 3), np.ones(3))
    assert not credit.fit(5) and credit.weights is None


def _learner(cls, graph, seed):
    model = cls(GraphActorCriticPolicy, PruningEnv(graph, lambda _c: None), n_steps=16, batch_size=4, n_epochs=10,
                learning_rate=1e-3, gamma=0.0, policy_kwargs=policy_kwargs(hidden=32), seed=seed, device="cpu")
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def test_per_layer_old_log_probabilities_add_up_to_the_plans():
    """LayerCreditPPO divides by each layer's log-probability under the policy that collected the rollout; summed
    over the nodes they are what SB3 stored for the plan."""
    graph = chain_graph(24)
    model = _learner(LayerCreditPPO, graph, 0)
    seen = []

    def capture() -> None:
        buffer = model.rollout_buffer
        obs = {k: torch.as_tensor(v.reshape(-1, *v.shape[2:])) for k, v in buffer.observations.items()}
        actions = torch.as_tensor(buffer.actions.reshape(16, -1)).long()
        with torch.no_grad():
            _, log_probs, _, decides = model.policy.evaluate_layers(obs)
        per_node = log_probs.gather(2, actions[..., None])[..., 0]
        seen.append((per_node.sum(dim=1).numpy(), buffer.log_probs.reshape(-1), per_node[~decides].abs().max()))

    model.train = capture
    train_on_imagined(model, graph, lambda c: StepOutcome(float(np.sum(c)), {}), 16)
    (summed, stored, fixed), = seen
    np.testing.assert_allclose(summed, stored, atol=1e-4)
    assert float(fixed) < 1e-6  # nodes with one valid choice: log-probability 0, nothing to learn


@contextmanager
def _one_thread():
    """One torch thread: a busy machine's second thread slows these tiny networks ten-fold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _target_probability(model, graph, target) -> float:
    obs = {k: torch.as_tensor(v).unsqueeze(0) for k, v in pad_observation(graph, Padding.fitting(graph)).items()}
    with torch.no_grad():
        nodes = model.policy.get_distribution(obs).distribution
    return float(np.mean([float(nodes[int(n)].probs[0][t]) for n, t in zip(graph.layer_nodes, target, strict=True)]))


def test_layer_credit_teaches_many_layers_their_own_choice_faster_than_plan_credit(monkeypatch):
    """50 layers, each paid for its own choice (choice 1 or 2, by the sign of a node feature), the plan's reward the
    mean over the layers plus noise. Same seeds, same 8 updates of 16 plans: SB3's PPO (one advantage and one clipped
    ratio per plan) barely moves; clipping each layer's ratio on its own moves it further; the counterfactual
    baseline, which takes the other 49 layers' share out of each layer's advantage, further still."""
    def run(cls) -> float:
        gain = []
        for seed in range(2):
            graph = chain_graph(100, seed=seed)
            target = np.where(graph.node_features[graph.layer_nodes, 0] > 0, 1, 2)
            rng = np.random.default_rng(seed)
            model = _learner(cls, graph, seed)
            before = _target_probability(model, graph, target)
            def paid(choices, target=target, rng=rng) -> StepOutcome:
                return StepOutcome(float(np.mean(np.asarray(choices) == target) + rng.normal(0, 0.05)), {})

            for _ in range(8):
                train_on_imagined(model, graph, paid, 16)
            gain.append(_target_probability(model, graph, target) - before)
        return float(np.mean(gain))

    with _one_thread():
        plan, layer = run(PPO), run(LayerCreditPPO)
        monkeypatch.setattr(LayerCredit, "fit", lambda self, k: False)  # no baseline: the plan's advantage per layer
        clip_only = run(LayerCreditPPO)
    assert layer > 1.15 * clip_only and clip_only > 2 * plan > 0


def test_a_search_with_layer_credit_keeps_its_budget_and_resumes(evaluator):
    """A FLOPs PPO search with per-layer credit and a proxy warm-up: the learner is a LayerCreditPPO whose reward
    models (one per stream of rewards) are saved with it; continued with a larger budget, it resumes from its
    ppo.zip."""
    from host.kinds import Phase

    ppo_flops_search(evaluator, budget=6, credit="layer", proxy_plans=32)
    assert evaluator.journal.count(Phase.SEARCH, evaluated_only=True) == 6
    run_dir = evaluator.journal.path.parent
    model = LayerCreditPPO.load(run_dir / "ppo.zip", device="cpu")
    assert model.num_timesteps >= 2
    # one reward model per stream of rewards, saved with the learner: the warm-up's proxy-rewarded plans
    assert "proxy" in model._credit() and len(model._credit()["proxy"].plans) > 16
    ppo_flops_search(evaluator, budget=8, credit="layer")
    assert evaluator.journal.count(Phase.SEARCH, evaluated_only=True) == 8


def test_a_child_is_credited_on_the_layers_it_changed_against_its_parent():
    """ParentCredit: a recorded child's changed layers get its reward minus its parent's, at their nodes; its other
    nodes, and every node of a plan that is no recorded child, get nothing."""
    layer_nodes = np.array([1, 3, 4, 6])
    credit = ParentCredit(layer_nodes)
    parent, child = np.array([0, 2, 2, 1]), np.array([0, 3, 2, 0])
    credit.record(child, parent, 0.5)
    actions = np.zeros((2, 8), np.int64)
    actions[0, layer_nodes] = child
    actions[1, layer_nodes] = parent  # the parent itself was never recorded as a child
    advantages, found = credit.advantages(actions, np.array([0.75, 0.9]))
    assert found.tolist() == [True, False]
    expected = np.zeros((2, 8))
    expected[0, [3, 6]] = 0.25
    np.testing.assert_allclose(advantages, expected)


PARENT_DRIFT = 5


def test_parent_credit_learns_which_mutations_pay_faster_than_plan_credit():
    """Policy-guided evolution on a synthetic task: 50 layers, each paid for its own choice (1 or 2, by the sign of a
    node feature), each child its parent with one or two of the layers where the policy's proposal differs set to the
    proposal's choices (what AgingEvolution.child does). PPO learns from the children. The parents are near relatives
    (one base plan with 5 layers redrawn for each), as aging evolution's population is after a few generations. Judged against their parents, the mutations teach the right choices faster than the children's
    plan-level rewards, in which the parents' differences and every layer's share are noise. (With parents drawn
    uniformly at random, plan credit learns more, 0.043 against 0.013: each child is then a random plan, which informs
    all 50 layers, while a child's difference from its parent informs only the one or two it changed.)"""
    def run(cls) -> float:
        gain = []
        for seed in range(2):
            graph = chain_graph(100, seed=seed)
            layers = len(graph.layer_nodes)
            target = np.where(graph.node_features[graph.layer_nodes, 0] > 0, 1, 2)
            rng = np.random.default_rng(seed)
            model = _learner(cls, graph, seed)
            model.parents = ParentCredit(graph.layer_nodes) if cls is ParentCreditPPO else None
            before = _target_probability(model, graph, target)

            def reward(plan, target=target, rng=rng) -> float:
                return float(np.mean(plan == target) + rng.normal(0, 0.05))

            base = rng.integers(0, 4, size=layers)

            def child_of(proposal, rng=rng, model=model, reward=reward, base=base, layers=layers) -> StepOutcome:
                parent = base.copy()  # a population of near relatives, as aging evolution's is after a few generations
                drift = rng.choice(layers, size=PARENT_DRIFT, replace=False)
                parent[drift] = rng.integers(0, 4, size=PARENT_DRIFT)
                differ = np.flatnonzero(np.asarray(proposal) != parent)
                child = parent.copy()
                for layer in rng.choice(differ, size=min(len(differ), int(rng.integers(1, 3))), replace=False):
                    child[layer] = proposal[layer]
                if model.parents is not None:
                    model.parents.record(child, parent, reward(parent))
                return StepOutcome(reward(child), {"choices": child.tolist()})

            for _ in range(8):
                train_on_imagined(model, graph, child_of, 16, relabel=True, stream="search")
            gain.append(_target_probability(model, graph, target) - before)
        return float(np.mean(gain))

    with _one_thread():
        plan, parent = run(PPO), run(ParentCreditPPO)
    print(f"gain in the right choices' probability: plan credit {plan:.3f}, parent credit {parent:.3f}")
    assert parent > 1.3 * plan > 0


def test_parent_credit_needs_evolution():
    from host.errors import ConfigError
    from host.search.config import PPOSettings

    with pytest.raises(ConfigError, match="evolve is off"):
        PPOSettings(credit="parent")
    with pytest.raises(ConfigError, match="unknown PPO credit"):
        PPOSettings(credit="layers")
    assert PPOSettings(credit="parent", evolve=True).credit == "parent"


def test_a_search_with_parent_credit_learns_from_its_children_and_resumes(evaluator):
    """A FLOPs search with policy-guided evolution and parent credit: the learner is a ParentCreditPPO that recorded
    the children it evaluated (saved with it); continued with a larger budget, it resumes."""
    from host.kinds import Phase

    ppo_flops_search(evaluator, budget=12, credit="parent", evolve=True, proxy_plans=16)
    assert evaluator.journal.count(Phase.SEARCH, evaluated_only=True) == 12
    model = ParentCreditPPO.load(evaluator.journal.path.parent / "ppo.zip", device="cpu")
    assert model.parents is not None and len(model.parents.parents) > 0
    ppo_flops_search(evaluator, budget=14, credit="parent", evolve=True)
    assert evaluator.journal.count(Phase.SEARCH, evaluated_only=True) == 14
