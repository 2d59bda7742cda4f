"""Real exports of realized zoo models, run with the real ExecuTorch / LiteRT runtimes."""

import copy
import random
import sys

import pytest
import torch

from host.errors import ExportError, MissingDependencyError
from host.export import export_pte, export_tflite, run_pte
from host.models import zoo
from patterns import LayerAssignment, Plan, count, layer_choices, realize

pytestmark = [pytest.mark.integration, pytest.mark.executorch, pytest.mark.slow]

# Lowering costs ~0.1-0.3 s per graph node on 2 shared cores (Python graph passes). Every zoo model is
# exported (measured: ~100 s for all seven, ResNet-110 the slowest at ~28 s; the five beyond MobileNetV2 and
# the ViT add ~70 s).
ZOO = ["resnet20", "resnet56", "resnet110", "vgg16", "vgg19", "mobilenetv2", "vit_tiny"]


def _realized(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = zoo.create_model(name, width=0.25, image_size=8).eval()
    x = torch.randn(1, 3, 8, 8)
    rng = random.Random(seed)
    layers = {layer: LayerAssignment(*rng.choice(options)) for layer, options in layer_choices(model, x).items()
              if rng.random() < 0.6}
    return model, realize(model, Plan.from_mapping(layers), x), x


@pytest.mark.parametrize("name", ZOO)
def test_realized_zoo_model_exports_to_pte_matching_eager(name, tmp_path):
    model, realized, x = _realized(name)
    artifact = export_pte(realized, (x,), tmp_path / f"{name}.pte")
    assert artifact.kind == "pte" and artifact.size_bytes == artifact.path.stat().st_size > 0
    assert artifact.max_abs_err < 1e-3 and len(artifact.sha256) == 64
    assert count(realized, x).dense_macs < count(model, x).dense_macs
    other = torch.randn(1, 3, 8, 8)  # not the input the exporter checked
    with torch.no_grad():
        torch.testing.assert_close(run_pte(artifact.path, (other,))[0], realized(other), atol=1e-4, rtol=1e-4)


def test_int8_pte_is_smaller_and_close_to_the_quantized_reference(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(64, 64, 3, padding=1)).eval()
    x = torch.randn(1, 3, 16, 16)
    fp32 = export_pte(model, (x,), tmp_path / "fp32.pte")
    calibration = [(torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(100 + i)),) for i in range(8)]
    int8 = export_pte(model, (x,), tmp_path / "int8.pte", quantize=True, calibration=calibration)
    assert int8.quantized and not fp32.quantized
    assert int8.size_bytes < 0.6 * fp32.size_bytes
    assert dict(int8.timings)["quantize"] > 0
    # on an input the exporter never saw, the int8 program follows the fp32 model (not only its own quantized
    # reference; measured 1.5% of the output scale with these 8 calibration batches, 12% with the example
    # input alone), and it really computes in int8: its outputs are not the fp32 ones
    other = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = model(other)
    got, exact = run_pte(int8.path, (other,))[0], run_pte(fp32.path, (other,))[0]
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) < 0.05 * scale
    assert float((got - want).abs().max()) > 10 * float((exact - want).abs().max())


def test_export_of_an_unexportable_module_is_a_clear_error(tmp_path):
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent Python control flow: torch.export cannot trace it
                return x * 2
            return x

    with pytest.raises(ExportError, match="exporting to .pte failed") as info:
        export_pte(DataDependent(), (torch.randn(4),), tmp_path / "bad.pte")
    assert info.value.hint


@pytest.mark.litert
def test_tflite_export_matches_eager(tmp_path):
    model, realized, x = _realized("resnet20", seed=1)
    artifact = export_tflite(realized, (x,), tmp_path / "r20.tflite")
    assert artifact.kind == "tflite" and artifact.max_abs_err < 1e-3
    assert artifact.path.read_bytes()[4:8] == b"TFL3"


def test_tflite_without_litert_torch_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # makes `import litert_torch` fail
    with pytest.raises(MissingDependencyError) as info:
        export_tflite(torch.nn.Linear(2, 2), (torch.randn(1, 2),), tmp_path / "x.tflite")
    assert info.value.extra == "tflite-export" and "tflite-export" in str(info.value)


class _TwoBlocks(torch.nn.Module):
    """Two residual blocks on 32 channels: private conv1s, conv2s sharing one residual group."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.blocks = nn.ModuleList(nn.ModuleDict({"conv1": nn.Conv2d(32, 32, 3, padding=1, bias=False),
                                                   "bn1": nn.BatchNorm2d(32),
                                                   "conv2": nn.Conv2d(32, 32, 3, padding=1, bias=False),
                                                   "bn2": nn.BatchNorm2d(32)}) for _ in range(2))

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = torch.relu(x + b["bn2"](b["conv2"](torch.relu(b["bn1"](b["conv1"](x))))))
        return x


def test_tiled_kernel_mix_exports_gather_free_and_matches_eager(tmp_path):
    from patterns import fuse_batchnorm

    torch.manual_seed(0)
    model = _TwoBlocks().eval()
    x = torch.randn(1, 3, 8, 8)
    convs = [f"blocks.{i}.{c}" for i in range(2) for c in ("conv1", "conv2")]
    plan = Plan.from_mapping({n: LayerAssignment("kernel", "paper6_tiled", params=(("tile", 8),)) for n in convs})
    realized = realize(model, plan, x)
    assert not realized.sculpt_notes  # no gather: the residual convs keep their channel order
    assert realized.blocks[1]["conv2"].zeros == 8  # one dropped tile of a residual conv: zero channels
    fuse_batchnorm(realized, x)
    artifact = export_pte(realized, (x,), tmp_path / "tiled.pte")
    other = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(run_pte(artifact.path, (other,))[0], realized(other), atol=1e-4, rtol=1e-4)


class _GhostLike(torch.nn.Module):
    """Concat then a slice that keeps every channel (timm GhostNet's ``out[:, :self.out_chs]``), twice."""

    def __init__(self) -> None:
        super().__init__()
        self.primary = torch.nn.Conv2d(3, 4, 1)
        self.cheap = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.mix = torch.nn.Conv2d(8, 8, 1)
        self.head = torch.nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = self.primary(x)
        y = torch.cat([y, self.cheap(y)], 1)[:, :8]
        return self.head(self.mix(y).relu()[:, :8])


def test_whole_dimension_slices_do_not_split_the_xnnpack_delegate(tmp_path):
    """torch.export turns ``y[:, :C]`` of a C-channel ``y`` into an alias, which XNNPACK does not take: each one
    cut the graph into another delegate call with a portable copy between. They are dropped before lowering."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    x = torch.randn(1, 3, 8, 8)
    artifact = export_pte(_GhostLike().eval(), (x,), tmp_path / "ghost.pte")
    plan = deserialize_pte_binary(artifact.path.read_bytes()).program.execution_plan[0]
    assert len(plan.delegates) == 1 and [op.name for op in plan.operators] == []
    assert artifact.max_abs_err < 1e-3


class _MnistExample(torch.nn.Module):
    """The pooling of PyTorch's MNIST example: ``F.max_pool2d(x, 2)``, no stride (PyTorch: the kernel size)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(1, 8, 3), torch.nn.Conv2d(8, 8, 3)
        self.fc = torch.nn.Linear(8 * 5 * 5, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.cat([x], 1)  # as torchvision's DenseNet does at the start of every dense block
        x = torch.nn.functional.avg_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


def test_pools_without_a_stride_lower_in_fp32_and_int8(tmp_path):
    """XNNPACK's partitioner read a pool's stride argument that ``F.max_pool2d(x, 2)`` leaves out and failed the
    whole export ("IndexError: tuple index out of range"), refused ``avg_pool2d``'s default ``count_include_pad`` and
    a concatenation of one tensor; the exporter spells the pool defaults out and drops the concatenation, so the
    whole net is one delegate."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    torch.manual_seed(0)
    x = torch.randn(1, 1, 26, 26)
    for quantize in (False, True):
        artifact = export_pte(_MnistExample().eval(), (x,), tmp_path / f"mnist-{quantize}.pte", quantize=quantize,
                              calibration=[(torch.randn(1, 1, 26, 26),) for _ in range(4)], cache=False)
        plan = deserialize_pte_binary(artifact.path.read_bytes()).program.execution_plan[0]
        assert len(plan.delegates) == 1 and [op.name for op in plan.operators] == []


def test_lowered_programs_are_reused_only_for_the_same_program(tmp_path, monkeypatch):
    """A second export of the same module skips lowering (the copy is verified against eager all the same); a
    different input shape, other weights or int8 lower afresh; a corrupt cache entry is dropped and lowered
    again; AUTOSCULPT_EXPORT_CACHE=0 turns the cache off."""
    from host.export.pte import export_cache_dir

    monkeypatch.setenv("AUTOSCULPT_CACHE_DIR", str(tmp_path / "cache"))
    class _Scaled(torch.nn.Sequential):  # a 0-d integer buffer and a 0-d float constant: scalars are keyed too
        def __init__(self, *layers):
            super().__init__(*layers)
            self.register_buffer("steps", torch.tensor(3))

        def forward(self, x):
            return super().forward(x) * torch.tensor(0.5) + self.steps

    torch.manual_seed(0)
    model = _Scaled(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                    torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    x = torch.randn(1, 3, 12, 12)

    def stages(artifact):
        return [stage for stage, _ in artifact.timings]

    first = export_pte(model, (x,), tmp_path / "a.pte")
    assert "lower" in stages(first) and len(list(export_cache_dir().glob("*.pte"))) == 1
    again = export_pte(model, (x,), tmp_path / "b.pte")
    assert "lower" not in stages(again) and "cached lowering, verify" in stages(again)
    assert again.sha256 == first.sha256 and again.max_abs_err == first.max_abs_err
    # same graph code and weights, another static shape: another program
    assert "lower" in stages(export_pte(model, (torch.randn(1, 3, 16, 16),), tmp_path / "c.pte"))
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[0].weight.add_(1.0)
    assert "lower" in stages(export_pte(other, (x,), tmp_path / "d.pte"))
    assert "lower" in stages(export_pte(model, (x,), tmp_path / "e.pte", quantize=True))
    # a cache entry that is not that program: caught by the verification, dropped, lowered again
    entry = next(e for e in export_cache_dir().glob("*.pte") if e.read_bytes() == first.path.read_bytes())
    entry.write_bytes((tmp_path / "d.pte").read_bytes())
    redone = export_pte(model, (x,), tmp_path / "f.pte")
    assert "lower" in stages(redone) and redone.sha256 == first.sha256
    monkeypatch.setenv("AUTOSCULPT_EXPORT_CACHE", "0")
    assert export_cache_dir() is None and "lower" in stages(export_pte(model, (x,), tmp_path / "g.pte"))
