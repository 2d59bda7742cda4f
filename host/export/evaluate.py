"""Accuracy of an exported artifact, computed by the real runtime (ExecuTorch or LiteRT) one image at a time:
what a deployed int8 model really scores, next to the PyTorch model it came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from host.errors import ExportError
from host.quiet import muted

DEFAULT_EVAL_IMAGES = 1000  # a validation split is capped here: ~1 ms per image on the runtimes


@dataclass(frozen=True)
class AccuracyPair:
    """Top-1 accuracy of the PyTorch model (``reference``) and of the artifact, on the same ``images``."""

    reference: float
    artifact: float
    images: int
    split: str

    @property
    def drop_points(self) -> float:
        return 100.0 * (self.reference - self.artifact)

    def to_dict(self, reference_name: str = "fp32", artifact_name: str = "int8") -> dict[str, float | int | str]:
        return {reference_name: round(self.reference, 4), artifact_name: round(self.artifact, 4),
                "images": self.images, "split": self.split}


def _runner(path: Path, kind: str):
    """A callable image (1, C, H, W) -> logits backed by one loaded program."""
    if kind == "pte":
        from executorch.runtime import Runtime

        with muted():
            method = Runtime.get().load_program(path).load_method("forward")

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(method.execute([x])[0])

        return run
    if kind == "tflite":
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter

        from host.export.tflite import _from_output, _to_input

        with muted():
            interpreter = Interpreter(model_path=str(path))
            interpreter.allocate_tensors()
        source, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

        def run(x: torch.Tensor) -> torch.Tensor:
            interpreter.set_tensor(source["index"], _to_input(x.numpy(), source))
            interpreter.invoke()
            return torch.from_numpy(_from_output(np.array(interpreter.get_tensor(out["index"])), out))

        return run
    raise ExportError(f"no runtime for artifacts of kind '{kind}'", hint="pass a .pte or .tflite artifact")


def artifact_accuracy(path: str | Path, kind: str, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of the artifact at ``path`` on images ``x`` (N, C, H, W) with labels ``y``, run one
    image at a time (the artifact's static batch of one)."""
    run = _runner(Path(path), kind)
    correct = 0
    with torch.no_grad():
        for i in range(len(x)):
            correct += int(run(x[i:i + 1].contiguous()).reshape(-1).argmax()) == int(y[i])
    return correct / max(1, len(x))


def module_accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1) -> float:
    """Top-1 accuracy of a PyTorch module on the same images (batches of ``batch_size``: an exported program
    keeps the batch size it was exported with)."""
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += int((module(x[i:i + batch_size]).argmax(dim=1) == y[i:i + batch_size]).sum())
    return correct / max(1, len(x))


def compare_accuracy(module: nn.Module, artifact_path: str | Path, kind: str, x: torch.Tensor, y: torch.Tensor, *,
                     split: str = "val", limit: int = DEFAULT_EVAL_IMAGES) -> AccuracyPair:
    """The PyTorch module and the artifact scored on the first ``limit`` images of ``x``/``y``."""
    x, y = x[:limit], y[:limit]
    return AccuracyPair(module_accuracy(module, x, y), artifact_accuracy(artifact_path, kind, x, y), len(x), split)
