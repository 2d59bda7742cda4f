"""int8 on every plan the search can produce: seeded random plans of every zoo model (every family, kernel
patterns with tiles and ratios included) are quantized, lowered to XNNPACK and run by the real ExecuTorch
runtime; export_pte checks the outputs against the quantized PyTorch reference (INT8_TOLERANCE) and raises
otherwise. One plan of each model also goes to int8 .tflite through litert-torch and the LiteRT interpreter."""

import pytest
import torch

from host.export import export_pte, export_tflite, run_pte
from host.export.int8 import calibration_from
from patterns import fuse_batchnorm, layer_choices, realize
from tests.helpers import zoo_params
from tests.unit.patterns.test_realize import _model, _random_plan

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PRUNED_LAYERS = 45
MODELS = ["resnet20", "resnet56", "resnet110", "vgg16", "vgg19", "mobilenetv2", "vit_tiny"]


def _realized(name: str, seed: int):
    model = _model(name, size=8)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    choices = layer_choices(model, x)
    # kernel patterns first: they are the realized forms XNNPACK's quantized path used to refuse. About 45 layers
    # pruned at most: ResNet-110's 109 layers repeat ResNet-56's blocks, and lowering all of them in int8 took
    # 111 s of CI
    plan = _random_plan({layer: sorted(options, key=lambda o: o[0] != "kernel")[:3] for layer, options
                         in choices.items()}, seed, dense_share=max(0.2, 1 - PRUNED_LAYERS / len(choices)))
    realized = realize(model, plan, x).eval()
    fuse_batchnorm(realized, x)
    images = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(100 + seed))
    return plan, realized, x, calibration_from(images, 8)


@pytest.mark.parametrize("name", zoo_params(MODELS))
def test_random_plans_quantize_lower_and_run_in_int8(name, tmp_path):
    plan, realized, x, calibration = _realized(name, seed=1)
    assert len(plan) > 0
    artifact = export_pte(realized, (x,), tmp_path / "q.pte", quantize=True, calibration=calibration, cache=False)
    assert artifact.quantized and artifact.path.is_file()
    # it runs on an input it was not calibrated or checked on, and follows the fp32 model there
    other = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = realized(other)
    got = run_pte(artifact.path, (other,))[0]
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert float((got - want).abs().max()) < 0.25 * max(1.0, float(want.abs().max()))


@pytest.mark.litert
def test_int8_tflite_of_a_kernel_plan_runs_in_litert(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    plan, realized, x, calibration = _realized("resnet20", seed=2)
    assert any(a.family == "kernel" for _, a in plan)
    artifact = export_tflite(realized, (x,), tmp_path / "q.tflite", quantize=True, calibration=calibration)
    assert artifact.quantized and artifact.kind == "tflite"
    interpreter = Interpreter(model_path=str(artifact.path))
    assert interpreter.get_input_details()[0]["dtype"].__name__ == "int8"  # really int8, I/O included


def test_int8_ghost_bottleneck_with_squeeze_excitation_loads_and_runs(tmp_path):
    """timm's GhostNet: a ghost module's concat, its whole-width ``out[:, :out_chs]`` (an alias after export)
    and a squeeze-excitation mean right after it. Quantized with the alias in place, XNNPACK's int8 mean
    reduced the wrong axes at run time and the program did not load (the dense int8 GhostNet-0.5 failed)."""
    from host.models.external import import_library

    timm = import_library("timm")
    torch.manual_seed(0)
    block = timm.create_model("ghostnet_050", num_classes=10).blocks[4].eval()  # ghost1 -> SE -> ghost2
    assert any(type(m).__name__ == "SqueezeExcite" for m in block.modules())
    x = torch.randn(1, block[0].ghost1.primary_conv[0].in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    calibration = calibration_from(torch.randn(8, *x.shape[1:], generator=torch.Generator().manual_seed(1)), 8)
    artifact = export_pte(block, (x,), tmp_path / "ghost.pte", quantize=True, calibration=calibration, cache=False)
    out = run_pte(artifact.path, (x,))[0]
    with torch.no_grad():
        ref = block(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 0.1 * ref.abs().max()  # int8 follows the fp32 block


def test_off_centre_windows_are_quantized_in_their_symmetric_padding_form(tmp_path):
    """A kernel pattern's off-centre window reads a zero-padded input (conv(pad(x))), which XNNPACK folds in
    fp32. In int8 that form was slower than a conv with symmetric padding and a slice on some plans, so the
    exporter quantizes the second: the same function, one delegate, no pad left."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    from host.export.pte import _quantize
    from patterns.pattern_conv import PatternConv

    torch.manual_seed(0)
    windows = PatternConv((3, 3), (1, 1), (1, 1), [(0, 0), (1, 1), (0, 0)],
                          [torch.nn.Conv2d(8, 8, (2, 3)), torch.nn.Conv2d(8, 8, (2, 2)), torch.nn.Conv2d(8, 8, 3)])
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), windows, torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    calibration = calibration_from(torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1)), 8)
    program = torch.export.export(model, (x,))
    assert sum(n.target == torch.ops.aten.pad.default for n in program.graph.nodes) == 2
    quantized, _ = _quantize(program, (x,), calibration)
    targets = [n.target for n in quantized.graph.nodes]
    assert torch.ops.aten.pad.default not in targets and torch.ops.aten.slice.Tensor in targets
    artifact = export_pte(model, (x,), tmp_path / "windows.pte", quantize=True, calibration=calibration, cache=False)
    plan = deserialize_pte_binary(artifact.path.read_bytes()).program.execution_plan[0]
    assert len(plan.delegates) == 1 and [op.name for op in plan.operators] == []
