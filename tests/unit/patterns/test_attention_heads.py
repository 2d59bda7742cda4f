"""Attention heads of every spelling become prunable: found from the traced graph, masked exactly, realized
into smaller modules whose forward still runs (head counts updated or the graph rewritten)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from host.errors import PlanError
from patterns import LayerAssignment, Plan, apply_masks, layer_choices, realize
from patterns.heads import PrunedMultiheadAttention, head_layouts
from tests.helpers import require_models_extra

HEADS = ("vit", "heads50")


@pytest.fixture(scope="module")
def timm():
    require_models_extra()
    from host.models.external import import_library

    return import_library("timm")


def _realize(model, x, assignments):
    """Masked and realized model of the plan; checks they compute the same on x and on another batch size."""
    plan = Plan.from_mapping({layer: LayerAssignment("vit", pattern) for layer, pattern in assignments.items()})
    masked = copy.deepcopy(model)
    apply_masks(masked, plan, x)
    realized = realize(model, plan, x)
    other = torch.randn(3, *x.shape[1:])  # the rewritten forwards must not bake in the batch size
    with torch.no_grad():
        for inputs in (x, other):
            torch.testing.assert_close(realized(inputs), masked(inputs), atol=1e-5, rtol=0)
        assert (masked(x) - model(x)).abs().max() > 1e-4  # heads really went
    return realized


def _head_layers(model, x):
    return sorted(layer for layer, options in layer_choices(model, x).items() if HEADS in options)


def test_timm_vit_fused_qkv_sdpa_and_matmul_softmax(timm):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                              num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    assert _head_layers(model, x) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    layout = head_layouts(model, x)["blocks.0.attn.qkv"]
    assert layout.heads == 3 and layout.head_dims == (64, 64) and layout.out[0] == "blocks.0.attn.proj"
    # the fused layout is [q heads | k heads | v heads], read from the traced reshape (B, N, 3, H, D)
    assert layout.q[1][1][0] == 64 and layout.k[1][0][0] == 192 and layout.v[1][2][-1] == 575
    realized = _realize(model, x, {"blocks.0.attn.qkv": "heads50", "blocks.1.attn.qkv": "heads25"})
    first, second = realized.blocks[0].attn, realized.blocks[1].attn
    assert type(first) is type(model.blocks[0].attn)  # head-count attributes updated in place
    assert (first.num_heads, first.attn_dim, first.qkv.out_features, first.proj.in_features) == (1, 64, 192, 64)
    assert (second.num_heads, second.qkv.out_features) == (2, 384)
    for block in model.blocks:  # timm's explicit path: q @ k^T, an fx-wrapped mask helper, softmax, @ v
        block.attn.fused_attn = False
    assert _head_layers(model, x) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    _realize(model, x, {"blocks.1.attn.qkv": "heads50"})


def test_timm_deit_distilled(timm):
    torch.manual_seed(1)
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              depth=2, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    assert _head_layers(model, x) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    realized = _realize(model, x, {"blocks.0.attn.qkv": "heads25"})
    assert realized.blocks[0].attn.num_heads == 2


@pytest.mark.slow
def test_timm_mobilevit_through_the_export_fallback(timm):
    torch.manual_seed(2)
    model = timm.create_model("mobilevit_xxs", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)  # torch.fx cannot trace it (control flow on sizes): torch.export does
    layers = _head_layers(model, x)
    assert len(layers) == 9 and all(layer.endswith("attn.qkv") for layer in layers)
    realized = _realize(model, x, {layers[0]: "heads50", layers[-1]: "heads25"})
    assert realized.get_submodule(layers[0].rpartition(".")[0]).num_heads == 2


class _Block(nn.Module):
    """Separate q/k/v under other names, the head size computed from the input width, softmax written out;
    ``bias``: a learned per-head bias on the scores; ``norm_merged``: a LayerNorm over the merged heads."""

    def __init__(self, dim: int = 32, n_head: int = 4, tokens: int = 7, bias: bool = False,
                 norm_merged: bool = False) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln = nn.LayerNorm(dim)
        self.to_query, self.to_key, self.to_value = nn.Linear(dim, dim), nn.Linear(dim, dim, bias=False), \
            nn.Linear(dim, dim)
        self.merge = nn.Linear(dim, dim)
        self.score_bias = nn.Parameter(torch.randn(n_head, tokens, tokens)) if bias else None
        self.merged_norm = nn.LayerNorm(dim) if norm_merged else nn.Identity()

    def forward(self, x):
        batch, tokens, width = x.shape
        h = self.ln(x)
        q = self.to_query(h).view(batch, tokens, self.n_head, width // self.n_head).transpose(1, 2)
        k = self.to_key(h).view(batch, tokens, self.n_head, width // self.n_head).transpose(1, 2)
        v = self.to_value(h).view(batch, tokens, self.n_head, width // self.n_head).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(width // self.n_head)
        if self.score_bias is not None:
            scores = scores + self.score_bias
        out = scores.softmax(dim=-1) @ v
        return x + self.merge(self.merged_norm(out.transpose(1, 2).reshape(batch, tokens, width)))


class _Net(nn.Module):
    def __init__(self, **block) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 32)
        self.blocks = nn.Sequential(_Block(**block), _Block(**block))
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x)).mean(1))


def test_hand_written_block_gets_its_graph_rewritten():
    torch.manual_seed(3)
    model, x = _Net().eval(), torch.randn(2, 7, 12)
    assert _head_layers(model, x) == ["blocks.0.to_query", "blocks.1.to_query"]
    layout = head_layouts(model, x)["blocks.0.to_query"]
    assert (layout.heads, layout.k[0], layout.v[0], layout.out[0]) == (4, "blocks.0.to_key", "blocks.0.to_value",
                                                                      "blocks.0.merge")
    # the merge reads the width from the input (reshape(B, N, C)): updating n_head alone cannot work
    assert layout.route == "graph"
    realized = _realize(model, x, {"blocks.0.to_query": "heads50", "blocks.1.to_query": "heads25"})
    assert realized.blocks[0].to_query.out_features == 16 and realized.blocks[1].merge.in_features == 24
    assert any("forward rewritten for 2 heads" in note for note in realized.sculpt_notes)


def test_no_head_choice_where_removal_is_not_exact():
    x = torch.randn(2, 7, 12)
    for kwargs, reason in (({"bias": True}, "differs per head"), ({"norm_merged": True}, "do not feed exactly")):
        model = _Net(**kwargs).eval()
        reasons: dict[str, str] = {}
        assert head_layouts(model, x, reasons=reasons) == {}
        assert reason in reasons["blocks.0"]
        assert _head_layers(model, x) == []
        plan = Plan.from_mapping({"blocks.0.to_query": LayerAssignment(*HEADS)})
        with pytest.raises(PlanError, match=reason) as info:
            realize(model, plan, x)
        assert "queries" in info.value.hint


class _SplitQkv(nn.Module):
    """nanoGPT's spelling: one qkv linear split by width, views with the width from ``x.size()``, causal SDPA."""

    def __init__(self, n_embd: int = 32, n_head: int = 4) -> None:
        super().__init__()
        self.c_attn, self.c_proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
        self.n_head, self.n_embd = n_head, n_embd

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class _Interleaved(nn.Module):
    """A fused qkv laid out per head ([h0: q k v | h1: q k v ...]), split by unflatten and chunk."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.h, self.qkv, self.o = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(x).unflatten(-1, (self.h, -1)).transpose(1, 2).chunk(3, dim=-1)
        return self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


class _NormedQk(nn.Module):
    """Per-head LayerNorms on q and k, a tensor temperature, values twice as wide as queries."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.h = heads
        self.q, self.k, self.v, self.o = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), \
            nn.Linear(2 * dim, dim)
        self.qn, self.kn = nn.LayerNorm(dim // heads), nn.LayerNorm(dim // heads)
        self.register_buffer("t", torch.tensor(0.3))

    def forward(self, x):
        B, N, _ = x.shape
        q = self.qn(self.q(x).reshape(B, N, self.h, -1)).permute(0, 2, 1, 3)
        k = self.kn(self.k(x).reshape(B, N, self.h, -1)).permute(0, 2, 1, 3)
        v = self.v(x).reshape(B, N, self.h, -1).permute(0, 2, 1, 3)
        a = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * self.t, dim=-1)
        return self.o(torch.matmul(a, v).permute(0, 2, 1, 3).reshape(B, N, -1))


@pytest.mark.parametrize(("block", "anchor", "route", "dims"), [
    (_SplitQkv, "1.c_attn", "graph", (8, 8)), (_Interleaved, "1.qkv", "attributes", (8, 8)),
    (_NormedQk, "1.q", "attributes", (8, 16))])
def test_more_spellings(block, anchor, route, dims):
    torch.manual_seed(6)
    model, x = nn.Sequential(nn.Linear(8, 32), block(), nn.Linear(32, 3)).eval(), torch.randn(2, 6, 8)
    assert _head_layers(model, x) == [anchor]
    layout = head_layouts(model, x)[anchor]
    assert (layout.heads, layout.route, layout.head_dims) == (4, route, dims)
    realized = _realize(model, x, {anchor: "heads50"})
    assert realized.get_submodule(layout.out[0]).in_features == 2 * dims[1]


class _MhaNet(nn.Module):
    def __init__(self, read_weights: bool = False, cross: bool = False, width_in_code: int | None = None) -> None:
        super().__init__()
        self.read_weights, self.cross, self.width_in_code = read_weights, cross, width_in_code
        self.stem = nn.Conv2d(3, 32, 4, stride=4)
        self.memory = nn.Conv2d(3, 32, 4, stride=4)
        self.norm = nn.LayerNorm(32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        tokens = self.stem(x)
        n, c = tokens.shape[:2]
        # a reshape that spells the width out: read from the tensor, or (torchvision's ViT) a constant
        tokens = tokens.reshape(n, self.width_in_code or c, -1).transpose(1, 2)
        h = self.norm(tokens)
        kv = self.memory(x).flatten(2).transpose(1, 2) if self.cross else h
        out, weights = self.attn(h, kv, kv)
        tokens = tokens + out
        if self.read_weights:
            tokens = tokens + weights.mean()
        return self.head(tokens.mean(1))


def test_embedding_through_multihead_attention_is_pruned_exactly():
    """A residual stream through a self-attention nn.MultiheadAttention: the attention is one layer of the
    group (its query's channels in, out_proj's rows out), realized as a narrower PrunedMultiheadAttention,
    heads removable on top; masked and realized compute the same, with the same MACs."""
    import patterns
    from patterns.structure import coupled_groups

    torch.manual_seed(12)
    model, x = _MhaNet().eval(), torch.randn(2, 3, 16, 16)
    group = {g.root: g for g in coupled_groups(model, x[:1])}["stem"]
    assert group.barrier == "" and "attn.out_proj" in group.producers and "attn" in group.consumers
    assert ("channel", "prune50") in layer_choices(model, x)["attn.out_proj"]
    for assignments, widths in (({"stem": ("channel", "prune50")}, (4, 16, 16)),
                                ({"attn.out_proj": ("channel", "prune25"), "head": ("keep", "dense")}, (4, 24, 24)),
                                ({"stem": ("channel", "prune75"), "attn.out_proj": HEADS}, (2, 8, 8))):
        plan = Plan.from_mapping({k: LayerAssignment(*v) for k, v in assignments.items()})
        masked = copy.deepcopy(model)
        masks = apply_masks(masked, plan, x)
        realized = realize(model, plan, x).eval()
        attn = realized.attn
        assert isinstance(attn, PrunedMultiheadAttention)
        assert (attn.num_heads, attn.in_proj_weight.shape[1], attn.out_proj.out_features) == widths
        with torch.no_grad():
            torch.testing.assert_close(realized(x), masked(x), atol=1e-5, rtol=0)
            assert (masked(x) - model(x)).abs().max() > 1e-3
        # 16 tokens: stem 16 x width x 48, q/k/v 3 x inner x width and out width x inner per token, head width x 5
        heads, width, _ = widths
        inner = 8 * heads
        assert patterns.count(realized, x).dense_macs == 16 * width * 48 + 16 * 4 * inner * width + width * 5
        assert patterns.count(model, x, masks).macs == patterns.count(realized, x).macs


def test_cross_attention_read_weights_and_widths_fixed_in_code_keep_the_embedding():
    from patterns.structure import coupled_groups

    x = torch.randn(1, 3, 16, 16)
    for model, reason in ((_MhaNet(cross=True), "cross-attention"), (_MhaNet(read_weights=True), "weights read"),
                          (_MhaNet(width_in_code=32), "does not run with one channel fewer")):
        group = {g.root: g for g in coupled_groups(model.eval(), x)}["stem"]
        assert reason in group.barrier
        assert all(f != "channel" for f, _ in layer_choices(model, x)["attn.out_proj"])


def test_multihead_attention_is_replaced_by_a_smaller_equivalent():
    torch.manual_seed(4)
    model, x = _MhaNet().eval(), torch.randn(2, 3, 16, 16)
    assert _head_layers(model, x) == ["attn.out_proj"]
    realized = _realize(model, x, {"attn.out_proj": "heads50"})
    attn = realized.attn
    assert isinstance(attn, PrunedMultiheadAttention)
    assert (attn.num_heads, attn.in_proj_weight.shape, attn.out_proj.in_features) == (2, (48, 32), 16)
    # its projections run through F.linear inside the attention's call, not through a Linear's forward:
    # 16 tokens x (q, k, v: 3 x 32 x 32, out: 32 x 32) before, half the heads after; stem 16 x 32 x 48, head 32 x 5
    import patterns

    fixed = 16 * 32 * 48 + 32 * 5
    assert patterns.count(model, x).dense_macs == fixed + 16 * 4 * 32 * 32
    masks = apply_masks(copy.deepcopy(model), Plan.from_mapping({"attn.out_proj": LayerAssignment("vit", "heads50")}),
                        x)
    assert patterns.count(model, x, masks).macs == patterns.count(realized, x).macs == fixed + 16 * 2 * 32 * 32
    reasons: dict[str, str] = {}
    assert head_layouts(_MhaNet(read_weights=True).eval(), x, reasons=reasons) == {}
    assert "weights are used" in reasons["attn"]


def test_pruned_multihead_attention_computes_what_torch_does_on_self_and_cross_attention():
    # self-attention takes one packed projection (a constant weight XNNPACK packs ahead of time; slicing it
    # into q/k/v ran the corpus's mha_classifier floor at 1.23x of dense, packed at 1.61x: separate runs, 64 px),
    # cross-attention the weight's three slices
    torch.manual_seed(8)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    mine = PrunedMultiheadAttention(mha.in_proj_weight.detach().clone(), mha.in_proj_bias.detach().clone(),
                                    mha.out_proj.weight.detach().clone(), mha.out_proj.bias.detach().clone(),
                                    heads=4, batch_first=True, dropout=0.0, kdim=16, vdim=16).eval()
    q, kv = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    with torch.no_grad():
        for args in ((q, q, q), (q, kv, kv)):
            want = mha(*args, need_weights=False)[0]
            assert torch.allclose(mine(*args, need_weights=False)[0], want, atol=1e-5)


def test_plan_on_a_layer_that_is_not_a_query_projection():
    model, x = _Net().eval(), torch.randn(2, 7, 12)
    with pytest.raises(PlanError, match="does not produce the queries") as info:
        realize(model, Plan.from_mapping({"blocks.0.to_key": LayerAssignment(*HEADS)}), x)
    assert "blocks.0.to_query" in str(info.value)


def test_zoo_vit_with_head_dim_equal_to_head_count():
    from host.models import zoo

    torch.manual_seed(5)
    model = zoo.create_model("vit_tiny", width=0.25, image_size=8).eval()  # dim 16, 4 heads of 4
    x = torch.randn(2, 3, 8, 8)
    layout = head_layouts(model, x)["blocks.0.attn.q"]
    assert layout.route == "attributes" and layout.attributes == (("heads", "heads"),)
    realized = _realize(model, x, {"blocks.0.attn.q": "heads50"})
    assert (realized.blocks[0].attn.heads, realized.blocks[0].attn.head_dim) == (2, 4)


def test_torchvision_vit_multihead_attention(timm):
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(7)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
                              num_classes=5).eval()
    nn.init.normal_(model.heads.head.weight)  # torchvision zero-initializes the classifier
    x = torch.randn(2, 3, 32, 32)
    anchors = [f"encoder.layers.encoder_layer_{i}.self_attention.out_proj" for i in (0, 1)]
    assert _head_layers(model, x) == anchors
    realized = _realize(model, x, {anchors[1]: "heads25"})
    assert realized.encoder.layers.encoder_layer_1.self_attention.num_heads == 3
    # its patches are reshaped to (n, self.hidden_dim, -1), a constant: the residual stream keeps its width
    from patterns.structure import coupled_groups

    stream = {g.root: g for g in coupled_groups(model, x[:1])}["conv_proj"]
    assert "does not run with one channel fewer" in stream.barrier


def test_timm_swin_per_head_position_bias_is_refused_with_the_reason(timm):
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, window_size=7,
                              depths=(1, 1, 1, 1), embed_dim=24, num_heads=(2, 2, 2, 2), num_classes=5).eval()
    reasons: dict[str, str] = {}
    assert head_layouts(model, torch.randn(1, 3, 56, 56), reasons=reasons) == {}
    assert "differs per head" in reasons["layers.0.blocks.0.attn"]
