"""Head-pruned transformers export to .pte (XNNPACK) and run there as in eager: timm's ViT with its head
count updated, and a block whose forward was rewritten as a graph for fewer heads."""

import math

import pytest
import torch
from torch import nn

from host.export import export_pte, run_pte
from patterns import LayerAssignment, Plan, count, realize
from tests.helpers import require_models_extra

pytestmark = [pytest.mark.integration, pytest.mark.executorch, pytest.mark.slow]


def _check(model, realized, x, path):
    artifact = export_pte(realized, (x,), path)
    assert artifact.max_abs_err < 1e-3
    assert count(realized, x).dense_macs < count(model, x).dense_macs
    other = torch.randn(*x.shape)  # not the input the exporter checked
    with torch.no_grad():
        torch.testing.assert_close(run_pte(artifact.path, (other,))[0], realized(other), atol=1e-4, rtol=1e-4)


def test_head_pruned_timm_vit_exports_matching_eager(tmp_path):
    require_models_extra()
    from host.models.external import import_library

    timm = import_library("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                              num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    plan = Plan.from_mapping({"blocks.0.attn.qkv": LayerAssignment("vit", "heads50"),
                              "blocks.1.attn.qkv": LayerAssignment("vit", "heads25")})
    realized = realize(model, plan, x)
    assert [block.attn.num_heads for block in realized.blocks] == [1, 2]
    _check(model, realized, x, tmp_path / "vit.pte")


class _Block(nn.Module):
    """Merges the heads back with the width read from its input: realized as a rewritten graph."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = (f(x).view(b, n, self.heads, c // self.heads).transpose(1, 2) for f in (self.wq, self.wk, self.wv))
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(c // self.heads), dim=-1)
        return x + self.wo((att @ v).transpose(1, 2).reshape(b, n, c))


def test_rewritten_attention_graph_exports_matching_eager(tmp_path):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 32), _Block(), nn.Linear(32, 4)).eval()
    x = torch.randn(1, 6, 8)
    realized = realize(model, Plan.from_mapping({"1.wq": LayerAssignment("vit", "heads50")}), x)
    assert isinstance(realized[1], torch.fx.GraphModule) and realized[1].wq.out_features == 16
    _check(model, realized, x, tmp_path / "block.pte")
