"""realize_trained: a fine-tuned masked model realizes exactly, even for mixed kernel patterns whose
filter ranking changes during fine-tuning (where patterns.realize on the trained weights would not)."""

from __future__ import annotations

import copy

import torch

import patterns
from host.models import create_model
from host.search.candidate import mask_dict
from host.search.finetune import apply_masks_
from host.search.realize import realize_trained
from patterns.plan import LayerAssignment, Plan


def test_realized_trained_model_equals_masked_trained_model():
    torch.manual_seed(0)
    base = create_model("resnet20", num_classes=10, in_channels=1, image_size=8, width=0.5).eval()
    x = torch.randn(4, 1, 8, 8)
    plan = Plan.from_mapping({
        "layer1.0.conv1": LayerAssignment("kernel", "paper6"),
        "layer2.1.conv1": LayerAssignment("kernel", "rowcol"),
        "layer3.0.conv1": LayerAssignment("channel", "prune50"),
    })
    trained = copy.deepcopy(base)
    masks = mask_dict(patterns.apply_masks(trained, plan, x[:1]))
    with torch.no_grad():  # "fine-tuning": kept weights move a lot, so norm rankings change
        for p in trained.parameters():
            p.mul_(0.5 + torch.rand_like(p))
    apply_masks_(trained, masks)
    realized = realize_trained(base, trained, plan, x[:1])
    with torch.no_grad():
        expected = trained(x)
        assert torch.allclose(realized(x), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
        assert sum(p.numel() for p in realized.parameters()) < sum(p.numel() for p in base.parameters())
