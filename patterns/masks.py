"""MaskSet: boolean keep-masks by parameter name, applied in place (and re-applied after optimizer steps),
plus the kept channels of LayerNorms a channel group passes through (:mod:`patterns.norms`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

from patterns.errors import PlanError
from patterns.norms import restrict


class MaskSet(Mapping[str, torch.Tensor]):
    """Keep-masks (True = keep) for the parameters a plan touches; read-only mapping."""

    def __init__(self, masks: Mapping[str, torch.Tensor] | None = None,
                 norms: Mapping[str, tuple[int, torch.Tensor]] | None = None) -> None:
        self._masks = {name: mask.to(torch.bool) for name, mask in (masks or {}).items()}
        # {LayerNorm name: (normalized axis, keep-mask of its channels)}
        self.norms = {name: (dim, keep.to(torch.bool)) for name, (dim, keep) in (norms or {}).items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def combine(self, other: Mapping[str, torch.Tensor]) -> MaskSet:
        """Both sets of masks (an entry is kept only when both keep it)."""
        merged = dict(self._masks)
        for name, mask in other.items():
            merged[name] = merged[name] & mask if name in merged else mask.to(torch.bool)
        norms = dict(self.norms)
        for name, (dim, keep) in getattr(other, "norms", {}).items():
            norms[name] = (dim, norms[name][1] & keep) if name in norms else (dim, keep)
        return MaskSet(merged, norms)

    @torch.no_grad()
    def apply(self, model: nn.Module, norms: bool = True) -> nn.Module:
        """Zero every masked entry of ``model``'s parameters in place (call after each optimizer step) and,
        with ``norms``, make its restricted LayerNorms normalize over their kept channels only."""
        if norms and self.norms:

            restrict(model, self.norms)
        params = dict(model.named_parameters())
        for name, mask in self._masks.items():
            param = params.get(name)
            if param is None:
                raise PlanError(f"mask for '{name}' does not match any parameter of the model",
                                hint="apply masks to the model they were computed for")
            if param.shape != mask.shape:
                raise PlanError(f"mask for '{name}' has shape {tuple(mask.shape)}, parameter has "
                                f"{tuple(param.shape)}", hint="apply masks to the model they were computed for")
            param.mul_(mask.to(device=param.device, dtype=param.dtype))
        return model

    def zeroed(self) -> int:
        """How many parameter entries the masks remove."""
        return sum(int((~mask).sum()) for mask in self._masks.values())
