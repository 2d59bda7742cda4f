"""Channel groups through LayerNorms (a transformer's residual stream, a ConvNeXt stage) are pruned, and the
masked model, whose LayerNorms normalize over the kept channels, computes what the realized one does."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import patterns
from patterns.errors import PlanError
from patterns.norms import KeptChannels
from patterns.plan import LayerAssignment, Plan
from patterns.registry import layer_choices


class _ChannelsFirstNorm(nn.LayerNorm):
    """A LayerNorm over axis 1 of NCHW, spelled as timm's LayerNorm2d (its own forward, permutes)."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class _NormedResidual(nn.Module):
    """A stem, two residual blocks each behind a norm, a pooled head: one group through three norms."""

    def __init__(self, norm=_ChannelsFirstNorm) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.norms = nn.ModuleList(norm(16) for _ in range(2))
        self.convs = nn.ModuleList(nn.Conv2d(16, 16, 3, padding=1) for _ in range(2))
        self.final = norm(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(x)
        for norm, conv in zip(self.norms, self.convs, strict=True):
            x = x + conv(norm(x))
        return self.head(self.final(x).mean((2, 3)))


def _check(model, x, layer):
    plan = Plan.from_mapping({layer: LayerAssignment("channel", "prune50")})
    masked = copy.deepcopy(model)
    masks = patterns.apply_masks(masked, plan, x[:1])
    small = patterns.realize(model, plan, x[:1])
    with torch.no_grad():
        assert torch.allclose(masked(x), small(x), atol=1e-5)
    assert patterns.count(small, x[:1]).macs == patterns.count(model, x[:1], masks).macs
    assert not any(isinstance(h, KeptChannels) for m in small.modules() for h in m._forward_hooks.values())
    return masked, small


def test_a_group_through_channels_first_layernorms_is_pruned_exactly():
    torch.manual_seed(0)
    model, x = _NormedResidual().eval(), torch.randn(2, 3, 8, 8)
    for m in model.modules():  # non-trivial affine parameters
        if isinstance(m, nn.LayerNorm):
            nn.init.normal_(m.weight, 1.0, 0.3)
            nn.init.normal_(m.bias, 0.0, 0.3)
    assert ("channel", "prune50") in layer_choices(model, x[:1])["stem"]
    masked, small = _check(model, x, "stem")
    assert small.final.normalized_shape == (8,) and small.head.in_features == 8
    # the masked model without its kept-channel hooks is a different function: the zeros count in the norm
    bare = copy.deepcopy(masked)
    for m in bare.modules():
        m._forward_hooks.clear()
    with torch.no_grad():
        assert not torch.allclose(bare(x), small(x), atol=1e-3)
    # the hooks survive a deep copy (every candidate is a copy) and training keeps the equality
    copied = copy.deepcopy(masked).train()
    with torch.no_grad():
        assert torch.allclose(copied.eval()(x), small(x), atol=1e-5)


@pytest.mark.slow
@pytest.mark.executorch
def test_zoo_vit_residual_stream_and_the_masked_model_exports(tmp_path):
    from host.export import export_pte
    from host.models import zoo

    torch.manual_seed(1)
    model, x = zoo.create_model("vit_tiny", width=0.25, image_size=8).eval(), torch.randn(2, 3, 8, 8)
    masked, small = _check(model, x, "patch_embed")
    assert small.norm.normalized_shape[0] == model.norm.normalized_shape[0] // 2
    # `export --masks-only` exports the masked model, hooks and all (checked against eager by export_pte)
    assert export_pte(masked, (x[:1],), tmp_path / "masked.pte").path.is_file()


class _WideNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.LayerNorm((4, 8, 8))  # over channels and space: no single channel axis
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.norm(self.stem(x))).mean((2, 3))


def test_a_layernorm_over_several_axes_keeps_the_width_with_the_reason():
    model, x = _WideNorm().eval(), torch.randn(1, 3, 8, 8)
    assert not any(f == "channel" for f, _ in layer_choices(model, x)["stem"])
    with pytest.raises(PlanError, match="over several axes"):
        patterns.realize(model, Plan.from_mapping({"stem": LayerAssignment("channel", "prune50")}), x)
