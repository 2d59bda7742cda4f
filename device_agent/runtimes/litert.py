"""LiteRT adapter: runs ``.tflite`` models with ``ai-edge-litert``, or ``tflite_runtime`` where only that exists."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from pathlib import Path

import numpy as np

from device_agent.errors import invalid
from device_agent.runtimes import TensorSpec, check_inputs

NAME = "litert"
_CANDIDATES = (("ai_edge_litert.interpreter", "ai-edge-litert"), ("tflite_runtime.interpreter", "tflite-runtime"))


def _interpreter_module():
    for module, dist in _CANDIDATES:
        try:
            return importlib.import_module(module), dist
        except ImportError:
            continue
    raise ImportError("neither ai-edge-litert nor tflite-runtime is installed")


def version() -> str:
    """Version of the interpreter package in use."""
    _, dist = _interpreter_module()
    return f"{dist} {importlib.metadata.version(dist)}"


def warm_up_import() -> None:
    """Import the interpreter once when the worker starts."""
    _interpreter_module()


def current_threads() -> int:
    """LiteRT's default is one thread per core when threads is 0 (reported as such)."""
    return os.cpu_count() or 1


class LiteRTModel:
    """An allocated interpreter for one model."""

    def __init__(self, path: Path, threads: int) -> None:
        module, _ = _interpreter_module()
        self.threads = threads or (os.cpu_count() or 1)
        try:
            self._interp = module.Interpreter(model_path=str(path), num_threads=self.threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise invalid(f"LiteRT cannot load this model: {exc}") from exc
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()
        self._specs = [TensorSpec(tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]).name) for d in self._in]

    def input_specs(self) -> list[TensorSpec]:
        """Shapes and dtypes of the model's inputs."""
        return list(self._specs)

    def bind(self, inputs: list[np.ndarray]) -> None:
        """Check and hold the inputs for the following invokes (outside the timed loop)."""
        check_inputs(self._specs, inputs)
        for detail, arr in zip(self._in, inputs, strict=True):
            self._interp.set_tensor(detail["index"], np.ascontiguousarray(arr))

    def invoke(self) -> None:
        """Run the model once on the bound inputs (the only thing inside the timed loop)."""
        try:
            self._interp.invoke()
        except (ValueError, RuntimeError) as exc:
            raise invalid(f"LiteRT failed to run the model: {exc}") from exc

    def outputs(self) -> list[np.ndarray]:
        """Outputs of the last invoke, as numpy arrays."""
        return [np.array(self._interp.get_tensor(d["index"])) for d in self._out]


def load(path: Path, threads: int) -> LiteRTModel:
    """Load ``path`` with ``threads`` interpreter threads (0 = one per core)."""
    return LiteRTModel(path, threads)
