"""The Plan: which pattern every prunable layer gets. Plain, frozen data that round-trips through JSON.

A plan names layers by their qualified module name (``model.named_modules()``). Together with the base
model's weights it rebuilds a candidate exactly: every choice a family makes inside a layer (which filters
get which kernel shape, which channels go) is a deterministic function of the weights and the plan.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patterns.errors import ConfigError, PlanError

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class LayerAssignment:
    """One layer's choice: a family name, a pattern of that family and optional knobs.

    ``ratio`` overrides the pattern's default strength where the family has one (kernel: the share of
    filters, smallest L2 norm first, that receive the pattern mix; channel/vit: the share of channels,
    heads or hidden units removed). ``params`` holds extra family-specific (key, value) pairs.
    """

    family: str
    pattern: str
    ratio: float | None = None
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not self.family or not self.pattern:
            raise PlanError("a layer assignment needs a family and a pattern",
                            hint='write e.g. {"family": "kernel", "pattern": "row1"}')
        if self.ratio is not None and not (isinstance(self.ratio, int | float) and math.isfinite(self.ratio)
                                           and 0.0 <= self.ratio <= 1.0):
            raise PlanError(f"ratio must be a number in [0, 1], got {self.ratio!r}",
                            hint="ratio is a share: 0.5 means half of the filters/channels")

    @property
    def key(self) -> str:
        """The vocabulary id ``family:pattern``."""
        return f"{self.family}:{self.pattern}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"family": self.family, "pattern": self.pattern}
        if self.ratio is not None:
            out["ratio"] = self.ratio
        if self.params:
            out["params"] = {k: v for k, v in self.params}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, layer: str = "?") -> LayerAssignment:
        if not isinstance(data, Mapping):
            raise ConfigError(f"plan entry for layer '{layer}' must be an object, got {type(data).__name__}",
                              hint='write {"family": ..., "pattern": ...}')
        unknown = set(data) - {"family", "pattern", "ratio", "params"}
        if unknown:
            raise ConfigError(f"plan entry for layer '{layer}' has unknown keys {sorted(unknown)}",
                              hint="allowed keys: family, pattern, ratio, params")
        params = data.get("params") or {}
        if not isinstance(params, Mapping):
            raise ConfigError(f"'params' of layer '{layer}' must be an object")
        return cls(str(data.get("family", "")), str(data.get("pattern", "")),
                   None if data.get("ratio") is None else float(data["ratio"]),
                   tuple(sorted((str(k), v) for k, v in params.items())))


@dataclass(frozen=True)
class Plan:
    """Per-layer assignments, kept sorted by layer name so equal plans compare and serialize equal."""

    layers: tuple[tuple[str, LayerAssignment], ...] = ()
    model: str | None = None
    schema_version: int = SCHEMA_VERSION
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        names = [name for name, _ in self.layers]
        if len(set(names)) != len(names):
            raise PlanError("a plan names a layer twice", hint="give each layer one assignment")
        object.__setattr__(self, "layers", tuple(sorted(self.layers, key=lambda item: item[0])))

    @classmethod
    def from_mapping(cls, assignments: Mapping[str, LayerAssignment], *, model: str | None = None) -> Plan:
        """Build a plan from ``{layer_name: LayerAssignment}``."""
        return cls(tuple(assignments.items()), model=model)

    def __iter__(self) -> Iterator[tuple[str, LayerAssignment]]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def get(self, layer: str) -> LayerAssignment | None:
        """The assignment of ``layer`` or None when the plan leaves it dense."""
        for name, assignment in self.layers:
            if name == layer:
                return assignment
        return None

    def as_dict(self) -> dict[str, LayerAssignment]:
        return dict(self.layers)

    def to_json(self, *, indent: int | None = 2) -> str:
        """Stable JSON (sorted keys) so that equal plans give byte-identical files."""
        data: dict[str, Any] = {"schema_version": self.schema_version, "model": self.model,
                                "layers": {name: a.to_dict() for name, a in self.layers}}
        if self.notes:
            data["notes"] = self.notes
        return json.dumps(data, indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"plan is not valid JSON: {exc}", hint="check the plan file") from exc
        if not isinstance(data, dict) or not isinstance(data.get("layers"), dict):
            raise ConfigError("plan JSON must be an object with a 'layers' object",
                              hint='e.g. {"schema_version": 1, "layers": {"conv1": {"family": "kernel", '
                                   '"pattern": "row1"}}}')
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ConfigError(f"plan schema_version {version} is not supported (this build reads "
                              f"{SCHEMA_VERSION})", hint="re-create the plan with this version of autosculpt")
        layers = tuple((str(name), LayerAssignment.from_dict(entry, layer=str(name)))
                       for name, entry in data["layers"].items())
        return cls(layers, model=data.get("model"), notes=str(data.get("notes", "")))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """The plan in JSON file ``path``; ConfigError when it cannot be read, PlanError when it is not a
        UTF-8 plan (a non-UTF-8 byte is named with its offset)."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read plan file {path}: {exc.strerror}",
                              hint="check the --plan path") from exc
        try:
            text = data.decode("utf-8")  # JSON files are UTF-8 (RFC 8259), whatever the locale says
        except UnicodeDecodeError as exc:
            raise PlanError(f"plan file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
                            hint="pass a JSON plan written by Plan.save or a search (final-N.plan.json), "
                                 "or save the file as UTF-8") from None
        return cls.from_json(text)
