"""Runtime adapters, chosen by artifact kind. Availability is probed without importing the runtime.

Each adapter module exposes ``NAME``, ``version()`` and ``load(path, threads) -> LoadedModel``; the worker
process imports it, never the daemon (ExecuTorch pulls in torch).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from device_agent.artifact import PTE, TFLITE
from device_agent.errors import invalid, precondition


@dataclass(frozen=True)
class TensorSpec:
    """Shape and numpy dtype name of one model input."""

    shape: tuple[int, ...]
    dtype: str


class LoadedModel(Protocol):
    """A program loaded by a runtime, ready to run. ``invoke`` is the only thing inside the timed loop."""

    def input_specs(self) -> list[TensorSpec]: ...

    def bind(self, inputs: list[np.ndarray]) -> None: ...

    def invoke(self) -> None: ...

    def outputs(self) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class RuntimeSpec:
    """How to find one runtime: distributions to probe, the adapter module and the pip extra."""

    name: str
    kind: str
    distributions: tuple[tuple[str, str], ...]  # (distribution name, import name), first found wins
    adapter: str
    extra: str


RUNTIMES: dict[str, RuntimeSpec] = {
    "executorch": RuntimeSpec("executorch", PTE, (("executorch", "executorch"),),
                              "device_agent.runtimes.executorch", "executorch"),
    "litert": RuntimeSpec("litert", TFLITE, (("ai-edge-litert", "ai_edge_litert"),
                                             ("tflite-runtime", "tflite_runtime")),
                          "device_agent.runtimes.litert", "litert"),
}


@dataclass(frozen=True)
class RuntimeStatus:
    """Whether a runtime can be used here, its version, and otherwise why not."""

    name: str
    kind: str
    available: bool
    version: str
    unavailable_reason: str


def status(name: str) -> RuntimeStatus:
    """Probe a runtime by distribution metadata and import spec only (cheap, imports nothing)."""
    spec = RUNTIMES[name]
    for dist, module in spec.distributions:
        if importlib.util.find_spec(module) is None:
            continue
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return RuntimeStatus(name, spec.kind, True, version, "")
    return RuntimeStatus(name, spec.kind, False, "",
                         f"not installed: pip install 'autosculpt[agent,{spec.extra}]'")


def all_statuses() -> list[RuntimeStatus]:
    """Status of every known runtime."""
    return [status(name) for name in RUNTIMES]


def resolve(requested: str, kind: str) -> RuntimeSpec:
    """The runtime to use for an artifact of ``kind``; ``requested`` ("" = by kind) must match the kind."""
    if not requested:
        spec = next(s for s in RUNTIMES.values() if s.kind == kind)
    elif requested in RUNTIMES:
        spec = RUNTIMES[requested]
        if spec.kind != kind:
            raise invalid(f"runtime {requested!r} cannot run a .{kind} artifact; leave runtime empty to choose by kind")
    else:
        raise invalid(f"unknown runtime {requested!r}; known: {', '.join(RUNTIMES)} (or empty to choose by kind)")
    if not status(spec.name).available:
        raise precondition(
            f"runtime {spec.name} is not installed on this device: pip install 'autosculpt[agent,{spec.extra}]'"
        )
    return spec


def load_adapter(spec: RuntimeSpec):
    """Import an adapter module (in the worker process only)."""
    return importlib.import_module(spec.adapter)


def check_inputs(specs: list[TensorSpec], inputs: list[np.ndarray]) -> None:
    """INVALID_ARGUMENT unless ``inputs`` match the model's declared inputs in count, shape and dtype."""
    if len(inputs) != len(specs):
        raise invalid(f"model takes {len(specs)} input(s), got {len(inputs)}")
    for i, (spec, arr) in enumerate(zip(specs, inputs, strict=True)):
        if tuple(arr.shape) != spec.shape or arr.dtype.name != spec.dtype:
            raise invalid(
                f"input {i} has shape {list(arr.shape)} {arr.dtype.name}; the model expects "
                f"{list(spec.shape)} {spec.dtype}"
            )
