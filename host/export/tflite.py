"""LiteRT export: PyTorch -> .tflite through litert-torch (the ``tflite-export`` extra), verified with the
``ai_edge_litert`` Interpreter. Without litert-torch this raises MissingDependencyError naming the extra."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from host.errors import ExportError, MissingDependencyError
from host.export.artifact import Artifact, file_digest
from host.export.fold import symmetric_padded_convs
from host.export.pte import FP32_TOLERANCE, _compare, _Named
from host.quiet import muted

log = logging.getLogger(__name__)

# LiteRT's int8 kernels requantize with fixed-point multipliers and differ from the PT2E reference by several
# output steps (ResNet-20 at 16 px: 0.04-0.11 of the output scale on dense and kernel-pattern plans, where
# XNNPACK matches it exactly); a broken conversion is off by the whole output range. The accuracy that
# `export --quantize` reports is the measure of what int8 costs.
TFLITE_INT8_TOLERANCE = 0.15


def _converter():
    try:
        return importlib.import_module("litert_torch")
    except ImportError as exc:
        raise MissingDependencyError("litert-torch", "tflite-export", "export to .tflite") from exc


def export_tflite(module: nn.Module, example_inputs: Sequence[torch.Tensor], path: str | Path, *,
                  quantize: bool = False, calibration: Sequence[Sequence[torch.Tensor]] | None = None) -> Artifact:
    """Convert ``module`` to ``.tflite`` at ``path`` and check it with the LiteRT interpreter.

    ``quantize``: int8 through litert-torch's PT2E quantizer (per-channel symmetric weights, see
    :mod:`host.export.int8`), calibrated on ``calibration`` batches (or the example inputs), checked against
    the quantized PyTorch reference."""
    path = Path(path)
    inputs = tuple(example_inputs)
    module = _Named(module.eval()).eval()
    timings: list[tuple[str, float]] = []
    start = time.perf_counter()
    try:
        # litert-torch prints ~24 [START]/[DONE] lines on stdout, TensorFlow's and the converter's C++ code logs
        # to fd 2: held back (stdout stays clean for `--json`), shown if the conversion fails or at -v.
        with muted(stdout=True):
            converter = _converter()
            with torch.no_grad():
                if quantize:
                    from litert_torch.quantize.quant_config import QuantConfig

                    from host.export.int8 import calibrate, litert_quantizer

                    quantizer = litert_quantizer()
                    # off-centre kernel windows as symmetric padding and a slice: litert-torch's layout pass failed
                    # on a zero pad between quantized ops, and a pad of the graph input converted wrong
                    graph = symmetric_padded_convs(torch.export.export(module, inputs).module(), inputs)
                    module = calibrate(graph, quantizer, inputs, calibration, fold=False)
                    timings.append(("quantize", time.perf_counter() - start))
                    reference = module(*inputs)
                    edge_model = converter.convert(module, inputs, quant_config=QuantConfig(pt2e_quantizer=quantizer))
                else:
                    reference = module(*inputs)
                    edge_model = converter.convert(module, inputs)
            path.parent.mkdir(parents=True, exist_ok=True)
            edge_model.export(str(path))
    except (MissingDependencyError, ExportError):
        raise
    except Exception as exc:  # litert-torch raises many internal exception types
        path.unlink(missing_ok=True)
        raise ExportError(f"exporting to .tflite failed: {type(exc).__name__}: {exc}",
                          hint="the module must be torch.export-able with static shapes") from exc
    timings.append(("convert", time.perf_counter() - start))
    start = time.perf_counter()
    try:
        outputs = run_tflite(path, inputs)
        timings.append(("verify", time.perf_counter() - start))
        err = _compare(reference, outputs, TFLITE_INT8_TOLERANCE if quantize else FP32_TOLERANCE, path)
    except Exception:
        path.unlink(missing_ok=True)  # an artifact that does not load or disagrees is not left behind
        raise
    sha, size = file_digest(path)
    return Artifact(path, "tflite", sha, size, err, tuple(tuple(t.shape) for t in inputs), quantize, tuple(timings))


def run_tflite(path: str | Path, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Run a .tflite with the ai_edge_litert Interpreter (inputs in signature order)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise MissingDependencyError("ai-edge-litert", "litert", "running .tflite files") from exc
    with muted():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." and the like, from C++ to fd 2
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        details = interpreter.get_input_details()
        if len(details) != len(inputs):
            raise ExportError(f"{path} takes {len(details)} inputs, got {len(inputs)}")
        for detail, tensor in zip(details, inputs, strict=True):
            interpreter.set_tensor(detail["index"], _to_input(tensor.detach().float().numpy(), detail))
        interpreter.invoke()
        return [torch.from_numpy(_from_output(np.array(interpreter.get_tensor(d["index"])), d))
                for d in interpreter.get_output_details()]


def _to_input(array: np.ndarray, detail: dict) -> np.ndarray:
    """A float input as the tensor expects it: quantized with its (scale, zero point) when it is an integer
    tensor with quantization (an int8 model converted with quantized inputs), else cast."""
    scale, zero = detail.get("quantization", (0.0, 0))
    dtype = np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.integer) and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(array / scale) + zero, info.min, info.max).astype(dtype)
    return array.astype(dtype)


def _from_output(array: np.ndarray, detail: dict) -> np.ndarray:
    """A quantized integer output back to float with its (scale, zero point); other outputs unchanged."""
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.issubdtype(array.dtype, np.integer) and scale:
        return ((array.astype(np.float32) - zero) * scale).astype(np.float32)
    return array
