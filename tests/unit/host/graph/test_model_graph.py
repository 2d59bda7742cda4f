from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from host.errors import ModelError, PlanError
from host.graph import EDGE_TYPES, build_model_graph
from host.models.zoo import available_models, create_model
from patterns.plan import LayerAssignment, Plan
from patterns.registry import PATTERN_VOCAB
from patterns.structure import prunable_layers

X16 = torch.randn(1, 3, 16, 16)


@pytest.fixture(scope="module")
def resnet20_graph():
    torch.manual_seed(0)
    model = create_model("resnet20", image_size=16)
    return model, build_model_graph(model, X16)


@pytest.fixture(scope="module")
def vit_graph():
    torch.manual_seed(0)
    model = create_model("vit_tiny", image_size=16)
    return model, build_model_graph(model, X16)


def _edge(graph, src, dst):
    names = graph.layer_names
    matches = [e.type for e in graph.edges if names[e.src] == src and names[e.dst] == dst]
    return matches[0] if matches else None


def _reference_macs(model, x):
    """MACs of every Conv2d/Linear counted independently by torch's FLOP counter (2 FLOPs per MAC)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    counts = counter.get_flop_counts()
    out = {}
    for name in prunable_layers(model):
        ops = counts.get(f"{type(model).__name__}.{name}", {})
        out[name] = sum(ops.values()) // 2
    return out


@pytest.mark.parametrize("name", [n for n in available_models() if n != "resnet110"])  # 56 covers depth
def test_every_zoo_model_layers_match_plans_and_flop_counter(name):
    torch.manual_seed(0)
    model = create_model(name, image_size=16, width=0.25).eval()
    graph = build_model_graph(model, X16)
    assert graph.layer_names == prunable_layers(model)
    reference = _reference_macs(model, X16)
    assert {layer.name: layer.macs for layer in graph.layers} == reference
    assert graph.total_params == sum(p.numel() for p in model.parameters())
    data = graph.to_pyg()
    assert data.x.shape == (len(graph.layers), len(graph.feature_names))
    assert torch.isfinite(data.x).all() and data.x.abs().max() <= 1.0 + 1e-6
    assert data.edge_index.shape == (2, len(graph.edges)) and data.edge_type.max() < len(EDGE_TYPES)
    # every layer but the first is reached by some edge: dataflow is connected
    assert set(data.edge_index[1].tolist()) == set(range(1, len(graph.layers)))


def test_resnet_layers_edges_and_groups(resnet20_graph):
    _, graph = resnet20_graph
    conv1 = graph.layer("layer1.0.conv1")
    assert (conv1.kind, conv1.kernel, conv1.stride, conv1.padding, conv1.groups) == ("conv", (3, 3), (1, 1), (1, 1), 1)
    assert conv1.in_size == (16, 16) and conv1.macs == 16 * 16 * 16 * 16 * 9
    down = graph.layer("layer2.0.conv1")
    assert down.stride == (2, 2) and down.out_size == (8, 8) and down.out_channels == 32
    assert graph.layer("fc").kind == "linear" and graph.layer("fc").in_size == (1, 1)
    assert _edge(graph, "conv1", "layer1.0.conv1") == "sequential"
    assert _edge(graph, "layer1.0.conv1", "layer1.0.conv2") == "sequential"
    assert _edge(graph, "layer1.0.conv2", "layer1.1.conv1") == "residual"
    assert _edge(graph, "conv1", "layer1.2.conv1") == "residual"  # identity shortcuts skip blocks
    assert _edge(graph, "layer2.0.shortcut.0", "layer2.1.conv1") == "residual"
    assert _edge(graph, "layer1.0.conv1", "layer1.1.conv1") is None  # conv2 sits in between
    # the residual stream of stage 1 is one coupled group; a block's inner channels are private
    stage1 = graph.group_of("layer1.0.conv2")
    assert stage1 is graph.group_of("conv1") and {"layer1.1.conv2", "layer1.2.conv2"} <= set(stage1.producers)
    inner = graph.group_of("layer1.0.conv1")
    assert inner.producers == ("layer1.0.conv1",) and inner.private


def test_vit_roles_and_attention_edges(vit_graph):
    _, graph = vit_graph
    kinds = {layer.name: layer.kind for layer in graph.layers}
    assert kinds["patch_embed"] == "conv" and kinds["head"] == "linear"
    assert [kinds[f"blocks.1.attn.{p}"] for p in ("q", "k", "v", "proj")] == ["attn_q", "attn_k", "attn_v", "attn_out"]
    assert kinds["blocks.1.mlp.fc1"] == kinds["blocks.1.mlp.fc2"] == "mlp"
    assert graph.layer("blocks.0.attn.q").in_size == (17, 1)  # 16 patches + class token
    for proj in ("q", "k", "v"):
        assert _edge(graph, f"blocks.0.attn.{proj}", "blocks.0.attn.proj") == "attention"
    assert _edge(graph, "blocks.0.mlp.fc1", "blocks.0.mlp.fc2") == "sequential"
    assert _edge(graph, "blocks.0.attn.proj", "blocks.0.mlp.fc1") == "residual"
    assert _edge(graph, "blocks.0.attn.q", "blocks.0.attn.k") is None
    # reading x.shape for the head reshape is not dataflow into the output projection
    assert _edge(graph, "patch_embed", "blocks.0.attn.proj") is None
    assert ("vit", "heads50") in graph.choices["blocks.0.attn.q"]
    assert ("vit", "hidden50") in graph.choices["blocks.0.mlp.fc1"]


class _Branchy(nn.Module):
    """Concat of two branches, a grouped conv, a fused qkv with SDPA."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.qkv = nn.Linear(16, 48)
        self.out = nn.Linear(16, 16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x):
        x = torch.cat([self.a(x), self.b(x)], dim=1)
        x = self.dw(torch.relu(self.grouped(x)))
        tokens = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        tokens = self.out(nn.functional.scaled_dot_product_attention(q, k, v))
        return self.fc2(torch.relu(self.fc1(tokens.mean(dim=1))))


def test_concat_grouped_fused_qkv_and_sdpa():
    graph = build_model_graph(_Branchy(), torch.randn(2, 3, 8, 8))
    kinds = {layer.name: layer.kind for layer in graph.layers}
    assert kinds == {"a": "conv", "b": "conv", "grouped": "grouped", "dw": "depthwise", "qkv": "attn_qkv",
                     "out": "attn_out", "fc1": "mlp", "fc2": "mlp"}
    assert _edge(graph, "a", "grouped") == "concat" and _edge(graph, "b", "grouped") == "concat"
    assert _edge(graph, "qkv", "out") == "attention"
    assert graph.layer("qkv").in_size == (64, 1) and graph.layer("qkv").macs == 64 * 16 * 48  # per sample


def test_features_are_deterministic_and_informative(resnet20_graph):
    model, graph = resnet20_graph
    again = build_model_graph(model, X16)
    torch.testing.assert_close(graph.to_pyg().x, again.to_pyg().x, rtol=0, atol=0)
    x = graph.to_pyg().x
    names = graph.feature_names
    assert len(set(names)) == len(names)
    share = x[:, names.index("macs_share")]
    assert share.sum().item() == pytest.approx(1.0, abs=1e-5)
    stride = x[:, names.index("stride")]
    assert stride[graph.layer_names.index("layer2.0.conv1")] > stride[graph.layer_names.index("layer1.0.conv1")]
    # no two structurally different layers get identical rows
    assert len({tuple(row.tolist()) for row in x}) == len(graph.layers)


def test_weight_stats_follow_the_weights():
    torch.manual_seed(0)
    model = create_model("resnet20", image_size=16, width=0.5).eval()
    before = build_model_graph(model, X16).layer("layer1.0.conv1").weight
    with torch.no_grad():
        model.layer1[0].conv1.weight[: model.layer1[0].conv1.out_channels // 2] = 0
    after = build_model_graph(model, X16).layer("layer1.0.conv1").weight
    assert before.sparsity == 0 and after.sparsity == pytest.approx(0.5)
    assert after.min_ratio == 0 and after.norm_cv > before.norm_cv


def test_plan_sets_pattern_one_hot(resnet20_graph):
    _, graph = resnet20_graph
    names = graph.feature_names
    plan = Plan.from_mapping({"layer1.0.conv1": LayerAssignment("kernel", "row1", ratio=0.5),
                              "layer2.0.conv1": LayerAssignment("channel", "prune50")})
    x = graph.to_pyg(plan).x
    row = graph.layer_names.index("layer1.0.conv1")
    assert x[row, names.index("pattern_kernel:row1")] == 1 and x[row, names.index("pattern_keep:dense")] == 0
    assert x[row, names.index("pattern_ratio")] == 0.5
    other = graph.layer_names.index("layer3.0.conv2")
    assert x[other, names.index("pattern_keep:dense")] == 1
    assert x[:, [names.index(f"pattern_{f}:{p}") for f, p in PATTERN_VOCAB]].sum(dim=1).eq(1).all()
    # allowed choices: kernel patterns for 3x3 convs, none for the linear classifier
    fc = graph.layer_names.index("fc")
    assert x[row, names.index("allowed_kernel:row1")] == 1 and x[fc, names.index("allowed_kernel:row1")] == 0
    structural = len(names) - (2 * len(PATTERN_VOCAB) + 1)
    torch.testing.assert_close(x[:, :structural], graph.to_pyg().x[:, :structural])


def test_bad_plans_raise_plan_error(resnet20_graph):
    _, graph = resnet20_graph
    with pytest.raises(PlanError, match="not in the model: nope"):
        graph.to_pyg(Plan.from_mapping({"nope": LayerAssignment("kernel", "row1")}))
    with pytest.raises(PlanError, match="unknown pattern"):
        graph.to_pyg(Plan.from_mapping({"conv1": LayerAssignment("kernel", "zigzag")}))


def test_model_is_left_untouched():
    torch.manual_seed(0)
    model = create_model("resnet20", image_size=16, width=0.5).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    build_model_graph(model, torch.randn(4, 3, 16, 16))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN stats did not move


class _Dynamic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow defeats symbolic tracing
            return self.conv(x)
        return self.conv(-x)


class _ShapeBranch(nn.Module):
    """Python control flow on the input's shape: torch.fx cannot trace it, torch.export can."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.stem(x)
        if x.shape[-1] > 4:
            y = nn.functional.max_pool2d(y, 2)
        y = y + self.body(torch.relu(y))
        t = y.flatten(2).transpose(1, 2)
        attn = torch.softmax(self.q(t) @ self.k(t).transpose(1, 2), dim=-1)
        return self.fc((attn @ self.v(t)).mean(dim=1))


def test_torch_export_fallback_for_untraceable_by_fx():
    graph = build_model_graph(_ShapeBranch(), torch.randn(1, 3, 8, 8))
    assert graph.tracer == "export"
    kinds = {layer.name: layer.kind for layer in graph.layers}
    assert kinds == {"stem": "conv", "body": "conv", "q": "attn_q", "k": "attn_k", "v": "attn_v", "fc": "attn_out"}
    assert _edge(graph, "stem", "body") == "sequential"
    assert _edge(graph, "stem", "q") == "residual" and _edge(graph, "body", "q") == "residual"
    assert _edge(graph, "q", "fc") == "attention"
    assert graph.layer("body").in_size == (4, 4)  # the shape branch was taken
    assert build_model_graph(create_model("resnet20", width=0.25), X16).tracer == "fx"


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "vit_tiny"])
def test_fx_and_export_tracers_agree(name):
    from patterns.trace import _Dataflow, _export_trace, _fx_trace, _layer_shapes

    model = create_model(name, width=0.25, image_size=16).eval()
    names = prunable_layers(model)
    shapes = _layer_shapes(model, X16, names, None)
    by_fx, by_export = _fx_trace(model, names, shapes), _export_trace(model, X16, names, shapes)
    _Dataflow(by_fx).run()
    _Dataflow(by_export).run()
    assert by_fx.edges == by_export.edges and by_fx.roles == by_export.roles
    assert len(by_fx.edges) > len(names) - 2


def test_errors_say_what_to_do(tmp_path):
    with pytest.raises(ModelError) as info:
        build_model_graph(_Dynamic(), torch.randn(1, 3, 8, 8))
    assert "torch.fx" in str(info.value) and "control flow" in info.value.hint
    with pytest.raises(ModelError, match="fails on an input of shape"):
        build_model_graph(create_model("resnet20", width=0.25), torch.randn(1, 1, 8, 8))
    with pytest.raises(ModelError, match="no Conv2d or Linear"):
        build_model_graph(nn.Sequential(nn.ReLU()), torch.randn(1, 3))
    model = create_model("resnet20", width=0.25, image_size=8).eval()
    program = torch.export.export(model, (torch.randn(1, 3, 8, 8),))
    with pytest.raises(ModelError) as info:
        build_model_graph(program.module(), torch.randn(1, 3, 8, 8))
    assert "package.module:factory" in info.value.hint


def test_to_dict_is_json_ready(resnet20_graph):
    import json

    _, graph = resnet20_graph
    data = json.loads(json.dumps(graph.to_dict()))
    assert data["total_macs"] == graph.total_macs
    assert data["layers"][1]["name"] == "layer1.0.conv1" and "kernel:row1" in data["layers"][1]["choices"]
    assert {e["type"] for e in data["edges"]} == {"sequential", "residual"}
    assert len(data["groups"]) == len(graph.groups)
