"""Channel removal through grouped convolutions (``1 < groups``, not depthwise): ResNeXt, RegNet, ...

A grouped conv splits its input channels and its output channels into ``groups`` contiguous blocks; output
block g reads input block g only, so its weight is ``(out, in / groups, kh, kw)``. Such a conv stays a
grouped conv after a removal only if every block loses the same number of channels, which may sit at
different positions in each block. So a coupled group that passes a grouped conv (on its input or its
output side) is pruned in *blocks*: the group's channels are cut into ``blocks`` equal contiguous runs and
the same count goes from each run, the weakest channels of each run (:func:`balanced_drop`).

torch-pruning 1.6.1 narrows a grouped conv's weight as if it were dense (it keeps the first kept input
positions of the first block for every block), so realization prunes these convs here
(:func:`prune_grouped`). A depthwise conv (``groups == in_channels == out_channels``) is torch-pruning's
own case (its input and output channels are one group) and is not handled here.
"""

from __future__ import annotations

import torch
from torch import nn

from patterns.errors import PlanError


def is_grouped(module: nn.Module) -> bool:
    """A Conv2d with several groups that is not a plain depthwise conv."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 and not (
        module.groups == module.in_channels == module.out_channels)


def grouped_barrier(conv: nn.Conv2d, name: str, side: str, idxs, channels: int) -> str:
    """Why the group's channels cannot be removed in blocks through ``conv`` (its ``side``: "in"/"out"
    channels are members of the group, at indices ``idxs`` for the group's ``channels``), or ""."""
    width = conv.in_channels if side == "in" else conv.out_channels
    per = width // conv.groups
    where = f"the grouped conv {name} (groups={conv.groups})"
    if conv.groups == conv.out_channels:
        # torch-pruning types it as depthwise and ties its input channels to its output channels
        return f"channels pass through {where}, a depthwise conv with {conv.in_channels // conv.groups} inputs per filter"
    if width != channels or [int(i) for i in idxs] != list(range(channels)):
        return (f"channels pass through {where}, whose {side}put channels are not the group's channels one to "
                "one (a concat or split between them)")
    if per < 2:
        return f"channels pass through {where}, whose {side}put blocks have one channel each (no removal keeps them)"
    return ""


def combine_blocks(blocks: int, groups: int) -> int:
    """The block count honouring both ``blocks`` and a grouped conv's ``groups``; 0 when they conflict
    (neither divides the other, so no equal split of both exists with whole blocks)."""
    if blocks % groups == 0 or groups % blocks == 0:
        return max(blocks, groups)
    return 0


def balanced_drop(norms: torch.Tensor, blocks: int, k: int) -> list[int]:
    """About ``k`` channel indices, the same count from each of ``blocks`` equal runs (weakest first by
    ``norms``, ties to the lower index); at least one channel of each run stays."""
    from patterns.family import stable_order

    n = norms.numel()
    per = n // blocks
    each = min(per - 1, int(k / blocks + 0.5))
    drop: list[int] = []
    for b in range(blocks):
        drop.extend(b * per + i for i in stable_order(norms[b * per:(b + 1) * per])[:each])
    return sorted(drop)


def check_balanced(idxs, n: int, blocks: int, where: str) -> None:
    """Raise PlanError unless ``idxs`` take the same count from each of ``blocks`` runs of ``n`` channels."""
    per = n // blocks
    counts = [0] * blocks
    for i in idxs:
        counts[int(i) // per] += 1
    if len(set(counts)) > 1 or counts[0] >= per:
        raise PlanError(f"{where}: the removed channels pass a grouped conv but are not the same count from each of "
                        f"its {blocks} blocks of {per} (per block: {counts})",
                        hint="give the layers of one coupled group the same channel pattern")


def input_rows(conv: nn.Conv2d, channel: int) -> tuple[slice, int]:
    """(the weight rows that read input ``channel``, its column in them) of a conv with groups."""
    in_per = conv.in_channels // conv.groups
    out_per = conv.out_channels // conv.groups
    g, col = divmod(int(channel), in_per)
    return slice(g * out_per, (g + 1) * out_per), col


def input_energy(conv: nn.Conv2d, weight: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of the weight each input channel of ``conv`` (groups >= 1) is multiplied with."""
    g = conv.groups
    out_per, in_per = weight.shape[0] // g, weight.shape[1]
    return weight.reshape(g, out_per, in_per, -1).pow(2).sum(dim=(1, 3)).reshape(-1)


def prune_grouped(conv: nn.Conv2d, idxs, side: str) -> None:
    """Remove ``conv``'s ``side`` ("in"/"out") channels ``idxs`` in place; each block must lose the same count."""
    removed = {int(i) for i in idxs}
    g = conv.groups
    weight = conv.weight.detach()
    if side == "out":
        check_balanced(removed, conv.out_channels, g, "grouped conv")
        keep = [o for o in range(conv.out_channels) if o not in removed]
        conv.weight = nn.Parameter(weight[keep].clone())
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias.detach()[keep].clone())
        conv.out_channels = len(keep)
        return
    check_balanced(removed, conv.in_channels, g, "grouped conv")
    in_per = conv.in_channels // g
    out_per = conv.out_channels // g
    parts = []
    for b in range(g):
        cols = [c for c in range(in_per) if b * in_per + c not in removed]
        parts.append(weight[b * out_per:(b + 1) * out_per][:, cols])
    conv.weight = nn.Parameter(torch.cat(parts).clone())
    conv.in_channels -= len(removed)
