"""int8 post-training quantization (PT2E) shared by the .pte and .tflite exporters.

Weights are quantized per output channel, symmetric; activations per tensor, calibrated on real inputs
(``calibration`` batches: a run's training images, or ``--data``'s). The engine's own quantizer (XNNPACK's for
.pte, litert-torch's for .tflite) annotates the graph; for XNNPACK, :class:`ShareQparams` then gives the
data-movement ops that realized plans add the quantization parameters of their input:

- a kernel-pattern layer computes an off-centre window as a conv over a zero-padded input, or as a conv with
  symmetric padding whose surplus border outputs are sliced off, or crops/pads its input, and concatenates its
  sub-convs (the exporters quantize the zero-padded windows in the second form,
  :func:`host.export.fold.symmetric_padded_convs`);
- a layer whose channel order cannot be folded gathers its channels back (``index_select``).

XNNPACK's quantizer annotates none of ``aten.slice``/``pad``/``index_select`` of a pre-dispatch graph (its
propagation knows only ``slice_copy``), so after calibration each such op had an input with one scale and
an output with another (the concat's), and
XNNPACK refuses a quantized slice whose input and output scales differ ("Failed to create static slice
node"): every ``paper6``/``rowcol`` plan failed to load in int8. Moving data does not change its range, so
sharing the input's parameters is exact, and every realized plan now quantizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from host.errors import ExportError

DEFAULT_CALIBRATION_IMAGES = 32
_ANNOTATION = "quantization_annotation"  # torchao.quantization.pt2e's node.meta key


def _share_targets() -> set:
    aten = torch.ops.aten
    return {aten.slice.Tensor, aten.slice_copy.Tensor, aten.narrow.default, aten.index_select.default,
            aten.constant_pad_nd.default, aten.pad.default, aten.select.int, aten.clone.default,
            aten.contiguous.default}


def share_qparams(quantizer):
    """``quantizer`` (a torchao PT2E Quantizer) extended by :class:`ShareQparams`."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, Quantizer, SharedQuantizationSpec

    class ShareQparams(Quantizer):
        """The engine quantizer's annotation, then: every data-movement op left unannotated whose input is
        quantized shares that input's quantization parameters (see the module docstring)."""

        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def transform_for_annotation(self, model):
            return self.inner.transform_for_annotation(model)

        def annotate(self, model):
            _skip_absent_batchnorm_patterns(self.inner, model)
            model = self.inner.annotate(model) or model
            targets = _share_targets()
            for node in model.graph.nodes:  # in graph order: a chain of moves shares one set of parameters
                if node.op != "call_function" or node.target not in targets or _ANNOTATION in node.meta:
                    continue
                source = node.args[0] if node.args else None
                annotation = getattr(source, "meta", {}).get(_ANNOTATION)
                if annotation is None or annotation.output_qspec is None:
                    continue
                shared = SharedQuantizationSpec(source)
                node.meta[_ANNOTATION] = QuantizationAnnotation(input_qspec_map={source: shared},
                                                                output_qspec=shared, _annotated=True)
            return model

        def validate(self, model) -> None:
            self.inner.validate(model)

    return ShareQparams(quantizer)


def _skip_absent_batchnorm_patterns(quantizer, model: torch.fx.GraphModule) -> None:
    """Leave out the quantizer's conv+BatchNorm patterns when ``model`` has no BatchNorm (our exporters fold it
    before quantizing). XNNPACK's quantizer traces each of those patterns with ``torch.export`` on every call,
    whether or not the graph could match: about 3.4 s per quantization, most of it for a small model."""
    patterns = getattr(type(quantizer), "SUPPORTED_PATTERNS", None)
    if patterns is None:
        return
    has_bn = any(node.op == "call_function" and "batch_norm" in str(node.target) for node in model.graph.nodes)
    quantizer.SUPPORTED_PATTERNS = list(patterns) if has_bn else [p for p in patterns if "_bn" not in p.name]


def xnnpack_quantizer():
    """XNNPACK's quantizer (per-channel symmetric weights, per-tensor activations), sharing qparams."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    return share_qparams(XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)))


def litert_quantizer():
    """litert-torch's PT2E quantizer (per-channel symmetric weights, per-tensor activations), as is: LiteRT
    converts slices whose scales differ, and sharing the parameters made its int8 output drift further from
    the reference (ResNet-20, paper6 plan: max error 1.75 shared vs 0.29 not)."""
    from litert_torch.quantize import pt2e_quantizer

    return pt2e_quantizer.PT2EQuantizer().set_global(pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))


def calibrate(graph_module: torch.fx.GraphModule, quantizer, inputs: Sequence[torch.Tensor],
              calibration: Sequence[Sequence[torch.Tensor]] | None, *, fold: bool = True) -> torch.fx.GraphModule:
    """prepare_pt2e -> run the calibration batches (or the example inputs when there are none) ->
    convert_pt2e: the quantized reference module (fake-quantized fp32 ops that the engine lowers to int8)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(graph_module, quantizer)
    batches = list(calibration) if calibration else [tuple(inputs)]
    for batch in batches:
        shapes = [tuple(t.shape) for t in batch]
        if shapes != [tuple(t.shape) for t in inputs]:
            raise ExportError(f"calibration batch of shape {shapes} differs from the example input "
                              f"{[tuple(t.shape) for t in inputs]}",
                              hint="the exported program has static shapes: calibrate on batches of the same shape")
        prepared(*batch)
    return convert_pt2e(prepared, fold_quantize=fold)


def calibration_from(x: torch.Tensor, count: int = DEFAULT_CALIBRATION_IMAGES,
                     batch: int = 1) -> list[tuple[torch.Tensor]]:
    """The first ``count`` images of ``x`` (N, C, H, W) as calibration batches of ``batch`` images (the
    exported program's static batch size)."""
    if count < 1:
        raise ExportError(f"at least one calibration image is needed, got {count}",
                          hint="pass --calibration-images N with N >= 1")
    if len(x) < batch:
        raise ExportError(f"{len(x)} images cannot fill one calibration batch of {batch}",
                          hint="use a smaller batch in --input-shape, or a larger dataset")
    stop = max(batch, min(count, len(x)) // batch * batch)
    return [(x[i:i + batch].clone(),) for i in range(0, stop, batch)]
