"""The result of an export: a file on disk, checked against eager PyTorch."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Artifact:
    """An exported model file and what we verified about it.

    ``max_abs_err`` is the largest absolute difference between the artifact's outputs (run by the real
    runtime) and the reference (eager fp32, or the quantized PyTorch reference for int8). ``timings``
    holds (stage, seconds) pairs so callers can see where export time goes.
    """

    path: Path
    kind: str  # "pte" | "tflite"
    sha256: str
    size_bytes: int
    max_abs_err: float
    input_shapes: tuple[tuple[int, ...], ...]
    quantized: bool = False
    timings: tuple[tuple[str, float], ...] = ()

    @property
    def seconds(self) -> float:
        return sum(t for _, t in self.timings)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "sha256": self.sha256, "size_bytes": self.size_bytes,
                "max_abs_err": self.max_abs_err, "input_shapes": [list(s) for s in self.input_shapes],
                "quantized": self.quantized, "timings": {k: round(v, 4) for k, v in self.timings}}


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of ``path``."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
