"""A small real model whose pruned plans can fail to realize for a reason no coupling analysis can see, so
the search's safety net for unbuildable plans stays tested whatever the pattern library learns to refuse.

``ShapeCheckedNet`` checks in Python, in its forward, that layer ``b`` still has its 8 output channels (like
code that sizes a buffer or a head from a layer's width). The masked model passes (masks keep shapes); a
realized plan that removes channels of ``b`` raises there. Before ``b`` it concatenates two branches and
shuffles their channels (ShuffleNet style), the construct whose channel pruning broke realization in issue 12.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from host.devices.results import BenchSpec
from host.search.candidate import CandidateEvaluator
from host.search.journal import Journal
from host.search.reward import Objective
from host.search.scorer import EvalData
from host.search.space import SearchSpace

CHECKED_CHANNELS = 8
IMAGE = 12  # input size of checked_space(): small, so tracing and realizing stay quick


class ShapeCheckedNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 16) -> None:
        super().__init__()
        del image_size  # global pooling: any input size
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.left = nn.Conv2d(8, 4, 3, padding=1)
        self.right = nn.Conv2d(8, 4, 3, padding=1)
        self.b = nn.Conv2d(8, CHECKED_CHANNELS, 3, stride=2, padding=1, bias=False)
        self.b_bn = nn.BatchNorm2d(CHECKED_CHANNELS)
        self.fc = nn.Linear(CHECKED_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = torch.cat([self.left(x), self.right(x)], 1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # channel shuffle, 2 groups
        x = torch.relu(self.b_bn(self.b(torch.relu(x))))
        if x.shape[1] != CHECKED_CHANNELS:
            raise RuntimeError(f"ShapeCheckedNet expects {CHECKED_CHANNELS} channels after b, got {x.shape[1]}")
        return self.fc(x.mean((2, 3)))


def shape_checked_net(num_classes: int = 10, in_channels: int = 1, image_size: int = 16) -> ShapeCheckedNet:
    """Factory for ``--model tests.unit.host.search.nets:shape_checked_net``."""
    torch.manual_seed(0)
    return ShapeCheckedNet(num_classes, in_channels, image_size)



def checked_evaluator(tmp_path, space: SearchSpace, data: EvalData) -> CandidateEvaluator:
    """An evaluator of the flops objective (no device) over a fresh journal in ``tmp_path``."""
    journal = Journal.create(tmp_path / "run", {})
    return CandidateEvaluator(space.graph_model, space, data, journal, Objective("flops", target_flops=0.5), [],
                              BenchSpec(threads=1))


def checked_space() -> tuple[SearchSpace, EvalData]:
    """ShapeCheckedNet's search space and a few random batches (tracing it takes seconds: build once)."""
    model = shape_checked_net().eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, IMAGE, IMAGE, generator=g), torch.randint(0, 10, (64,), generator=g)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    data = EvalData(example_input=x[:1].clone(), bn_batches=batches[:1], val_batches=batches[2:],
                    recover_batches=tuple(batches[:2]))
    return SearchSpace(model, data.example_input), data


def choices(space: SearchSpace, **layers: str) -> np.ndarray:
    """Dense choices except ``layers`` ({layer: "family:pattern"})."""
    out = space.dense_choices()
    for layer, choice in layers.items():
        out[space.layer_names.index(layer)] = space.vocab.index(choice)
    return out


def ppo_flops_search(evaluator: CandidateEvaluator, budget: int = 10, **ppo: object) -> None:
    """A small FLOPs-objective PPO search of ``evaluator``'s model into its journal (one torch thread; ``ppo``:
    PPOSettings fields over a tiny learner's)."""
    from host.search.config import PPOSettings, SearchConfig
    from host.search.runner import SearchRunner

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evaluator.evaluate_dense()
        settings = PPOSettings(**{"n_steps": 2, "batch_size": 2, "n_epochs": 2, "hidden": 16, **ppo})
        config = SearchConfig(out=evaluator.journal.path.parent, objective="flops", devices=(), budget=budget,
                              ppo=settings)
        SearchRunner(config, evaluator.journal)._search(evaluator, evaluator.space)
    finally:
        torch.set_num_threads(threads)


def record_rollouts(monkeypatch) -> list[tuple[np.ndarray, float, float]]:
    """Patch PPO so that every step stored in a real rollout buffer is recorded as (action, stored log-probability,
    the log-probability the proposing policy gives that action); returns the list the records go to."""
    from stable_baselines3.common.buffers import DictRolloutBuffer

    from host.search import ppo

    models, stored = [], []
    build, add = ppo.ppo_model, DictRolloutBuffer.add

    def keep_model(*args, **kwargs):
        models.append(build(*args, **kwargs))
        return models[-1]

    def record(self, obs, action, reward, episode_start, value, log_prob):
        obs_tensor = {k: torch.as_tensor(v) for k, v in obs.items()}
        with torch.no_grad():
            _, expected, _ = models[-1].policy.evaluate_actions(obs_tensor, torch.as_tensor(action))
        stored.append((np.array(action), float(log_prob.reshape(-1)[0]), float(expected.reshape(-1)[0])))
        return add(self, obs, action, reward, episode_start, value, log_prob)

    monkeypatch.setattr(ppo, "ppo_model", keep_model)
    monkeypatch.setattr(DictRolloutBuffer, "add", record)
    return stored
