"""The JSON file next to an exported model that says how to feed it and what it is.

``final-1.pte`` and ``final-1.tflite`` share ``final-1.json``; ``sculpt-host export --out m.pte`` writes
``m.json``. The sidecar holds the input pipeline (:class:`host.data.preprocess.Preprocessing`, or ``null``
when the exporter did not know the data, e.g. a plain ``export`` of a user checkpoint), the model and plan it
came from, its accuracy where known, and every artifact's format, size and digest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from host.errors import ConfigError

SCHEMA_VERSION = 1


def sidecar_path(artifact: str | Path) -> Path:
    """``final-1.pte`` -> ``final-1.json`` (the same for every format of one model)."""
    return Path(artifact).with_suffix(".json")


def write_sidecar(path: str | Path, *, artifacts: Sequence[Any], preprocessing: Mapping[str, Any] | None,
                  model: Mapping[str, Any], accuracy: Mapping[str, Any] | None = None,
                  notes: list[str] | tuple[str, ...] = ()) -> Path:
    """Write (atomically) the sidecar at ``path`` for ``artifacts`` (:class:`host.export.Artifact`).

    An existing sidecar of the same model keeps its other artifacts, so exporting the .tflite after the .pte
    (or an int8 .pte next to the fp32 one) lists them all, by file name."""
    path = Path(path)
    entries: dict[str, Any] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            if isinstance(old, dict) and old.get("model") == dict(model):
                entries.update(old.get("artifacts") or {})
        except (OSError, ValueError):
            pass  # an unreadable old sidecar is replaced
    for artifact in artifacts:
        entries[Path(artifact.path).name] = {"format": artifact.kind, "sha256": artifact.sha256, "bytes": artifact.size_bytes,
                        "int8": bool(artifact.quantized), "input_shapes": [list(s) for s in artifact.input_shapes],
                        "max_abs_err_vs_pytorch": artifact.max_abs_err}
    data = {
        "schema_version": SCHEMA_VERSION,
        "model": dict(model),
        "preprocessing": dict(preprocessing) if preprocessing is not None else None,
        "accuracy": dict(accuracy) if accuracy else None,
        "artifacts": entries,
        "notes": list(notes),
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_sidecar(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", hint="pass a file written by sculpt-host") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not JSON: {exc}", hint="pass a file written by sculpt-host") from None
    if not isinstance(data, dict) or "artifacts" not in data:
        raise ConfigError(f"{path} is not a sculpt-host sidecar", hint="pass a final-N.json written by a search")
    return data
