"""PPO over one-step episodes: how the search drives stable-baselines3 with the graph policy.

:func:`ppo_model` builds the PPO learner of a run (resumed from the run's ``ppo.zip``, or new with the
graph policy, optionally started from a trained policy file); :class:`BudgetCallback` ends learning when the
budget of evaluated candidates is used and saves the learner after every rollout, atomically, so a killed
search resumes from its last rollout. Each environment step evaluates one candidate
(:class:`host.search.env.PruningEnv`); this module knows nothing of what an evaluation does.
:func:`train_on_imagined` runs one PPO update on imagined steps (:mod:`host.search.surrogate`) without
touching the real rollout; :func:`policy_draws` samples plans from the current policy (best-of-k screening), and
:func:`train_on_plans` trains on the plans screening judged. :class:`LayerCreditPPO` (``PPOSettings.credit =
"layer"``) is SB3's PPO with the advantage and the clipped ratio taken per layer instead of per plan.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger

from host.kinds import Phase
from host.search.config import PPOSettings
from host.search.env import BatchedPruningEnv, GraphObservation, PruningEnv, StepOutcome
from host.search.journal import Journal
from host.search.policy import GraphActorCriticPolicy, load_policy_weights, policy_kwargs, read_policy_file
from host.search.space import SearchSpace

logger = logging.getLogger(__name__)


class BudgetCallback(BaseCallback):
    """Stops PPO once ``budget`` candidates were evaluated (steps that reused a journaled plan are free, up to
    ``max_steps`` steps in all) and saves the learner to ``ppo_path`` at the end of every rollout.
    ``report(evaluated)`` is called after every step (progress); ``imagine(model)``, when given, before every
    rollout (the Dyna-style imagined updates of :mod:`host.search.surrogate`)."""

    def __init__(self, journal: Journal, budget: int, max_steps: int, ppo_path: Path,
                 report: Callable[[int], None], imagine: Callable[[PPO], object] | None = None,
                 relabel: np.ndarray | None = None) -> None:
        """``relabel``: the layers' node indices in the action, to learn from the evaluated plans
        (:func:`relabel_evaluated`); None learns from the proposed ones."""
        super().__init__()
        self.journal, self.budget, self.max_steps = journal, budget, max_steps
        self.ppo_path, self.report = ppo_path, report
        self.imagine = imagine
        self.relabel = relabel

    def _on_rollout_start(self) -> None:
        # Dyna (host.search.surrogate): imagined updates between the last real update and the next real rollout
        if self.imagine is not None and self.journal.count(Phase.SEARCH, evaluated_only=True) < self.budget:
            self.imagine(self.model)

    def _on_step(self) -> bool:
        if self.relabel is not None:
            relabel_evaluated(self.model, self.locals, self.relabel)
        count = self.journal.count(Phase.SEARCH, evaluated_only=True)
        self.report(count)
        # a batched step whose last plans fell beyond the budget (not evaluated, reward 0): stop before the
        # rollout they sit in can train the policy
        skipped = any(info.get("skipped") for info in self.locals.get("infos", ()))
        return not skipped and count < self.budget and self.journal.count(Phase.SEARCH) < self.max_steps

    def _on_rollout_end(self) -> None:
        save_learner(self.model, self.ppo_path)


class LayerCreditPPO(PPO):
    """PPO with credit and trust region per layer (``PPOSettings.credit = "layer"``); SB3's PPO is ``"plan"``.

    A plan is one action of ~20-60 per-layer choices with one reward. SB3's PPO gives every layer the plan's
    advantage and clips the ratio of the whole plan (the product of the layers' ratios). Here:

    - **credit**: layer ``l`` of a plan gets ``R - b_l``, with ``b_l`` the reward an additive model of the reward
      (:class:`host.search.surrogate.LayerCredit`, fitted on the plans of earlier updates of the same stream of
      rewards) expects had ``l`` drawn its choice afresh from the policy. ``b_l`` does not depend on ``l``'s choice,
      so the gradient stays unbiased; the other layers' share of the reward, the noise in one layer's signal, cancels
      as far as the model fits. Until the model has :data:`host.search.surrogate.MIN_SAMPLES` plans, every layer
      gets the plan's advantage, as in SB3.
    - **trust region**: each layer's ratio is clipped on its own (as token-level PPO treats a sequence) and the
      clipped surrogate is summed over the layers, so at ratio 1 the gradient has SB3's scale.

    The value and entropy terms are SB3's. ``stream`` names where the rewards of the next update come from (the
    search's real evaluations, the proxy warm-up, ...): rewards of different streams are on different scales and
    each has its own model."""

    stream = "search"

    def _credit(self) -> dict:
        if not hasattr(self, "_credit_models"):
            self._credit_models = {}
        return self._credit_models

    def train(self) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)
        buffer = self.rollout_buffer
        obs = {k: torch.as_tensor(v.reshape(-1, *v.shape[2:])) for k, v in buffer.observations.items()}
        actions = torch.as_tensor(buffer.actions.reshape(len(buffer.rewards.reshape(-1)), -1)).long()
        rewards = buffer.rewards.reshape(-1)
        # the rollout was collected (or relabelled) under the current policy: its per-layer log-probabilities now
        # are the old ones the ratios divide by (the buffer keeps only their sum over the plan)
        with torch.no_grad():
            _, old_all, _, decides = self.policy.evaluate_layers(obs)
        old_log_prob = old_all.gather(2, actions[..., None])[..., 0]
        per_layer = self._layer_advantages(actions, rewards, old_all, decides)
        if per_layer is None:  # nothing to credit per layer in this rollout: SB3's update
            PPO.train(self)
            return
        weight = decides.float()
        stats: dict[str, list[float]] = {"policy_gradient_loss": [], "value_loss": [], "entropy_loss": [],
                                         "clip_fraction": [], "approx_kl": []}
        returns = torch.as_tensor(buffer.returns.reshape(-1), dtype=torch.float32)
        count = len(rewards)
        for _ in range(self.n_epochs):
            for idx in torch.randperm(count).split(self.batch_size):
                batch_obs = {k: v[idx] for k, v in obs.items()}
                values, all_log_prob, entropy, _ = self.policy.evaluate_layers(batch_obs)
                log_ratio = (all_log_prob.gather(2, actions[idx][..., None])[..., 0] - old_log_prob[idx]) * weight[idx]
                ratio = torch.exp(log_ratio)
                advantage = per_layer[idx]
                surrogate = torch.min(advantage * ratio, advantage * ratio.clamp(1 - clip_range, 1 + clip_range))
                policy_loss = -(surrogate * weight[idx]).sum(dim=1).mean()
                value_loss = F.mse_loss(returns[idx], values.flatten())
                entropy_loss = -entropy.mean()
                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                with torch.no_grad():
                    layers = weight[idx].sum().clamp(min=1.0)
                    stats["clip_fraction"].append(float((((ratio - 1).abs() > clip_range).float() * weight[idx]).sum()
                                                        / layers))
                    stats["approx_kl"].append(float((((ratio - 1) - log_ratio) * weight[idx]).sum() / layers))
                stats["policy_gradient_loss"].append(float(policy_loss.detach()))
                stats["value_loss"].append(float(value_loss.detach()))
                stats["entropy_loss"].append(float(entropy_loss.detach()))
                self.policy.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
            self._n_updates += 1
        for name, values in stats.items():
            self.logger.record(f"train/{name}", float(np.mean(values)))
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")

    def _layer_advantages(self, actions: torch.Tensor, rewards: np.ndarray, old_all: torch.Tensor,
                          decides: torch.Tensor) -> torch.Tensor | None:
        """[B, N] per-node advantages of the rollout's plans (``actions`` [B, N], ``rewards`` [B], the policy's
        per-node log-probabilities ``old_all`` [B, N, K], ``decides`` [B, N] the nodes that choose anything),
        normalized; None trains the rollout with SB3's plan-level update instead."""
        from host.search.surrogate import LayerCredit

        buffer = self.rollout_buffer
        model = self._credit().setdefault(self.stream, LayerCredit())
        if model.fit(old_all.shape[-1]):
            per_layer = torch.as_tensor(model.advantages(actions.numpy(), rewards, old_all.exp().numpy()),
                                        dtype=torch.float32)
        else:  # SB3's advantage (reward minus the critic's value) for every layer
            per_layer = torch.as_tensor(buffer.advantages.reshape(-1, 1), dtype=torch.float32).expand_as(decides)
        model.add(actions.numpy(), rewards)
        self.logger.record("train/credit_fit_error", model.error)
        if self.normalize_advantage and len(rewards) > 1:
            chosen = per_layer[decides]
            per_layer = (per_layer - chosen.mean()) / (chosen.std() + 1e-8)
        return per_layer


class ParentCredit:
    """Which plans are children of which parent, for :class:`ParentCreditPPO`: policy-guided evolution
    (``PPOSettings.evolve``) records each child it proposes (the per-layer choices), with its parent's choices and
    reward; ``layer_nodes`` are the layers' node indices in a PPO action."""

    def __init__(self, layer_nodes: np.ndarray) -> None:
        self.layer_nodes = np.asarray(layer_nodes, np.int64)
        self.parents: dict[bytes, tuple[np.ndarray, float]] = {}

    def record(self, child: np.ndarray, parent: np.ndarray, parent_reward: float) -> None:
        """``child`` (per-layer choices) was made from ``parent``, whose reward is ``parent_reward``."""
        child = np.asarray(child, np.int64)
        self.parents[child.tobytes()] = (child != np.asarray(parent, np.int64), float(parent_reward))

    def advantages(self, actions: np.ndarray, rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(advantages [B, N], found [B])`` for PPO actions [B, N] (per node) with rewards [B]: a recorded child's
        layers that differ from its parent get ``R - R_parent``, every other node 0; ``found`` marks the children."""
        actions = np.asarray(actions, np.int64)
        out = np.zeros(actions.shape, np.float64)
        found = np.zeros(len(actions), bool)
        for i, (action, reward) in enumerate(zip(actions, np.asarray(rewards, np.float64).reshape(-1), strict=True)):
            entry = self.parents.get(action[self.layer_nodes].tobytes())
            if entry is None:
                continue
            changed, parent_reward = entry
            out[i, self.layer_nodes[changed]] = reward - parent_reward
            found[i] = True
        return out, found


class ParentCreditPPO(LayerCreditPPO):
    """PPO that learns policy-guided evolution's mutations (``PPOSettings.credit = "parent"``, with ``evolve``).

    A child differs from its parent in the one or two layers the mutation set to the policy's choices (and any the
    projection moved back into the cost band); the parent's reward is the baseline the mutation is judged against.
    So each layer where a child differs from its parent gets ``R_child - R_parent`` as its advantage, every other
    layer none, and each layer's ratio is clipped on its own (:class:`LayerCreditPPO`). ``R_parent`` does not depend
    on the child's draw, so the gradient is unbiased, and it carries no other layer's share of the reward: what the
    policy learns is which of its proposed changes paid. Advantages are scaled by their root mean square (not
    centred: the parent already centres them). Rollouts without a recorded child (the proxy warm-up, the population's
    first plans) are SB3's plan-level update. ``parents`` (a :class:`ParentCredit`) is set by the search."""

    parents: ParentCredit | None = None

    def _layer_advantages(self, actions: torch.Tensor, rewards: np.ndarray, old_all: torch.Tensor,
                          decides: torch.Tensor) -> torch.Tensor | None:
        if self.parents is None or self.stream != "search":
            return None
        advantages, found = self.parents.advantages(actions.numpy(), rewards)
        changed = (advantages != 0) & decides.numpy()
        self.logger.record("train/children", int(found.sum()))
        if not found.any():
            return None
        if self.normalize_advantage and changed.any():
            advantages = advantages / (np.sqrt(np.mean(advantages[changed] ** 2)) + 1e-8)
        return torch.as_tensor(advantages * decides.numpy(), dtype=torch.float32)


def save_learner(model: PPO, path: Path) -> None:
    """Save the PPO learner to ``path`` atomically: a kill never leaves half a policy."""
    tmp = path.with_suffix(".tmp.zip")
    model.save(tmp)
    os.replace(tmp, path)


def ppo_model(env: PruningEnv | BatchedPruningEnv, space: SearchSpace, settings: PPOSettings, keep_logit: float,
              seed: int, ppo_path: Path, policy_file: str | None = None) -> PPO:
    """The run's PPO learner: the one saved at ``ppo_path`` (a resumed run), else a new one with the graph
    policy (its keep prior ``keep_logit``), its weights from ``policy_file`` when given.

    With a :class:`BatchedPruningEnv` of ``n`` copies a rollout still holds about ``settings.n_steps``
    candidates: ``ceil(n_steps / n)`` steps of ``n`` plans each (at least one step), so the policy is updated
    as often per evaluated candidate as without a cluster."""
    n_envs = env.num_envs if isinstance(env, BatchedPruningEnv) else 1
    n_steps = max(1, -(-settings.n_steps // n_envs))
    rollout = n_steps * n_envs
    batch_size = min(settings.batch_size, rollout)
    if rollout % batch_size:  # SB3 would train on a truncated last mini-batch: take the whole rollout instead
        batch_size = rollout
    learner = {"layer": LayerCreditPPO, "parent": ParentCreditPPO}.get(settings.credit, PPO)
    if ppo_path.is_file():
        model = learner.load(ppo_path, env=env, device="cpu")
        logger.info("resumed the policy from %s", ppo_path)
    else:
        model = learner(
            GraphActorCriticPolicy, env, n_steps=n_steps, batch_size=batch_size,
            n_epochs=settings.n_epochs, learning_rate=settings.learning_rate, ent_coef=settings.ent_coef,
            gamma=0.0,  # one-step episodes: the return is the reward
            policy_kwargs=policy_kwargs(settings.hidden, settings.gnn_layers, keep_logit, space.keep_index),
            seed=seed, device="cpu", verbose=0,
        )
        if policy_file:
            load_policy_weights(model.policy, read_policy_file(Path(policy_file)), space.vocab)
            logger.info("starting from the trained policy %s", policy_file)
    # SB3's default logger makes an (empty) $TMPDIR/SB3-<time> folder in every process that learns; the run's
    # figures go to its own tensorboard/, so a logger without outputs leaves nothing in /tmp
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def relabel_evaluated(model: PPO, rollout: dict, layer_nodes: np.ndarray) -> int:
    """Make the step SB3 is about to store say what was evaluated: each env whose ``info`` carries the evaluated
    plan (``choices``, one per layer) gets its action at ``layer_nodes`` replaced by that plan, and the stored
    log-probability becomes the plan's under the policy that proposed it. ``rollout`` is
    ``collect_rollouts``'s locals (a callback's ``self.locals``), edited in place before ``rollout_buffer.add``
    copies them. Returns how many actions changed.

    Why: every proposal is projected into the cost band (a few layers tightened or relaxed, picked at random),
    and invalid raw choices are mapped to valid ones. Trained on the proposal, PPO credits the reward of one plan
    to another, and the random part of the projection is noise in its signal; trained on the evaluated plan, the
    policy moves towards the plans that scored well, which is what it should learn to propose."""
    actions, infos = rollout["actions"], rollout["infos"]
    changed = []
    for i, info in enumerate(infos):
        choices = info.get("choices")
        if choices is None:
            continue
        choices = np.asarray(choices, actions.dtype)
        if not np.array_equal(actions[i, layer_nodes], choices):
            actions[i, layer_nodes] = choices
            changed.append(i)
    if changed:
        with torch.no_grad():
            _, log_prob, _ = model.policy.evaluate_actions(rollout["obs_tensor"], torch.as_tensor(actions))
        rollout["log_probs"].copy_(log_prob.reshape(rollout["log_probs"].shape))
    return len(changed)


def _node_distributions(model: PPO, padded: dict) -> list:
    """``model``'s current policy on one padded observation: one Categorical per (padded) node."""
    obs, _ = model.policy.obs_to_tensor(padded)
    with torch.no_grad():
        return model.policy.get_distribution(obs).distribution


def policy_draws(model: PPO, observation: GraphObservation) -> Callable[[int], list[np.ndarray]]:
    """``draw(n)``: ``n`` plans (valid per-layer choices) sampled from ``model``'s current policy for
    ``observation`` (best-of-k screening, :class:`host.search.surrogate.Screen`)."""
    env = PruningEnv(observation, lambda _choices: None)  # the padded observation and the action -> plan mapping
    padded, _ = env.reset()

    def draw(n: int) -> list[np.ndarray]:
        if n <= 0:
            return []
        with torch.no_grad():
            actions = torch.stack([d.sample((n,)) for d in _node_distributions(model, padded)],
                                  dim=-1).reshape(n, -1).numpy()
        return [env.layer_choices(a) for a in actions]
    return draw


def policy_spread(model: PPO, observation: GraphObservation, keep_index: int) -> dict[str, float]:
    """How decided ``model``'s policy is on ``observation``'s layers: the mean per-layer entropy of its choice (nats),
    the same for a uniform choice among each layer's valid patterns, the mean probability of each layer's most
    likely choice (~1: it proposes one plan every step) and the mean probability of keeping a layer (~1: it proposes
    the dense model and leaves every cut to the projection)."""
    padded, _ = PruningEnv(observation, lambda _choices: None).reset()
    distribution = _node_distributions(model, padded)
    nodes = [distribution[int(n)] for n in observation.layer_nodes]
    return {"entropy": float(np.mean([float(d.entropy()[0]) for d in nodes])),
            "uniform_entropy": float(np.mean(np.log(observation.choice_mask.sum(axis=1)))),
            "top_probability": float(np.mean([float(d.probs[0].max()) for d in nodes])),
            "keep_probability": float(np.mean([float(d.probs[0][keep_index]) for d in nodes]))}


def train_on_imagined(model: PPO, observation: GraphObservation, outcome: Callable[[np.ndarray], StepOutcome],
                      steps: int, relabel: bool = False, stream: str = "imagined") -> np.ndarray:
    """One PPO update of ``model`` on ``steps`` one-step episodes drawn from its current policy and rewarded by
    ``outcome`` (no candidate is evaluated). The run's own rollout buffer, step counter and last observation are
    restored afterwards, so the next real rollout and the budget do not see the imagined steps. The mini-batch
    grows with the imagined rollout (a quarter of it, at least the model's own). ``relabel``: learn from the plans
    ``outcome`` evaluated (:func:`relabel_evaluated`); ``stream``: where the rewards come from, for per-layer credit
    (:class:`LayerCreditPPO`: one reward model per stream). Returns the steps' rewards."""
    from stable_baselines3.common.buffers import DictRolloutBuffer
    from stable_baselines3.common.vec_env import DummyVecEnv

    env = DummyVecEnv([lambda: PruningEnv(observation, outcome)])
    buffer = DictRolloutBuffer(steps, model.observation_space, model.action_space, device=model.device,
                               gamma=model.gamma, gae_lambda=model.gae_lambda, n_envs=1)

    class _Quiet(BaseCallback):
        def _on_step(self) -> bool:
            if relabel:
                relabel_evaluated(self.model, self.locals, observation.layer_nodes)
            return True

    callback = _Quiet()
    callback.init_callback(model)
    if model.ep_info_buffer is None:  # before the model's first learn() (a proxy warm-up): what learn() would set up
        model.ep_info_buffer, model.ep_success_buffer = deque(maxlen=100), deque(maxlen=100)
    saved = (model.rollout_buffer, model.num_timesteps, model._last_obs, model._last_episode_starts,
             model.batch_size, getattr(model, "stream", None))
    try:
        model.stream = stream
        model.rollout_buffer = buffer
        model._last_obs = env.reset()
        model._last_episode_starts = np.ones((1,), dtype=bool)
        model.batch_size = min(max(saved[4], steps // 4), steps)
        model.collect_rollouts(env, callback, buffer, n_rollout_steps=steps)
        model.train()
    finally:
        (model.rollout_buffer, model.num_timesteps, model._last_obs, model._last_episode_starts,
         model.batch_size, stream) = saved
        if stream is None:
            del model.stream
        else:
            model.stream = stream
        model.policy.set_training_mode(False)
        env.close()
    return buffer.rewards.reshape(-1).copy()


def train_on_plans(model: PPO, observation: GraphObservation, plans: list[tuple[np.ndarray, float]],
                   stream: str = "imagined") -> np.ndarray:
    """One PPO update of ``model`` on given plans (per-layer choices) with given rewards, e.g. the plans best-of-k
    screening judged but did not evaluate: :func:`train_on_imagined` with each step's action replaced by the next
    plan and its log-probability under the current policy. Returns the rewards trained on."""
    queue = iter(plans)

    def outcome(_choices: np.ndarray) -> StepOutcome:
        choices, reward = next(queue)
        return StepOutcome(float(reward), {"imagined": True, "choices": np.asarray(choices).tolist()})

    return train_on_imagined(model, observation, outcome, len(plans), relabel=True, stream=stream)
