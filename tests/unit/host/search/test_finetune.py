"""Masked fine-tuning keeps pruned weights exactly zero; BN recalibration recomputes statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from host.search.finetune import FinetuneConfig, accuracy, learning_rate, masked_finetune, recalibrate_bn


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 3),
    )


def _batches(n: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 1, 6, 6, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]


def test_pruned_weights_stay_exactly_zero_with_momentum_and_weight_decay():
    model = _net()
    teacher = _net()
    mask = (torch.rand(8, 1, 3, 3, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    before = model[0].weight.detach().clone()
    masks = {"0.weight": mask}
    cfg = FinetuneConfig(epochs=3, lr=0.1, momentum=0.9, weight_decay=0.05, distill_alpha=0.5)
    masked_finetune(model, masks, _batches(), cfg, teacher=teacher)
    w = model[0].weight.detach()
    assert torch.count_nonzero(w[mask == 0]) == 0  # exactly zero, not merely small
    assert not torch.allclose(w[mask == 1], before[mask == 1])  # the kept weights did train
    assert not model.training


def test_without_post_step_masking_weights_would_regrow():
    """The control: plain SGD with momentum + weight decay and zeroed grads still moves pruned weights."""
    model = _net()
    mask = torch.zeros(8, 1, 3, 3)
    with torch.no_grad():
        model[0].weight.mul_(mask)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    for x, y in _batches(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()  # no masking at all: shows the test above would catch regrowth
    assert torch.count_nonzero(model[0].weight) > 0


def test_recalibrate_bn_uses_batches():
    model = _net()
    bn = model[1]
    assert torch.all(bn.running_mean == 0)
    recalibrate_bn(model, _batches(), num_batches=3)
    assert not torch.all(bn.running_mean == 0)
    assert bn.momentum == 0.1 and not model.training
    assert int(bn.num_batches_tracked) == 3


def test_accuracy_range():
    acc = accuracy(_net(), _batches(2))
    assert 0.0 <= acc <= 1.0


def test_cosine_schedule_anneals_from_lr_to_zero_and_constant_keeps_it():
    cosine, constant = FinetuneConfig(lr=0.04), FinetuneConfig(lr=0.04, schedule="constant")
    assert learning_rate(cosine, 0, 10) == pytest.approx(0.04)
    assert learning_rate(cosine, 5, 10) == pytest.approx(0.02)
    assert learning_rate(cosine, 9, 10) < 0.001
    assert [learning_rate(constant, i, 10) for i in (0, 5, 9)] == [0.04] * 3


def test_schedule_changes_the_trained_weights():
    """The schedule really reaches the optimizer: same batches, same start, different weights."""
    trained = []
    for schedule in ("cosine", "constant"):
        model = _net()
        masked_finetune(model, {}, _batches(), FinetuneConfig(epochs=2, lr=0.1, schedule=schedule))
        trained.append(model[0].weight.detach().clone())
    assert not torch.allclose(trained[0], trained[1])


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="schedule"):
        masked_finetune(_net(), {}, _batches(), FinetuneConfig(schedule="step"))
