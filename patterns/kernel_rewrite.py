"""The kernel family's rewrite: a masked k x k conv becomes a :class:`~patterns.pattern_conv.PatternConv`.

Holds :class:`KernelRewrite`, whose steps (fold, pin, fold_shared, replace) a
:class:`~patterns.kernel.KernelFamily` decision schedules on the realized copy: fold a private layer's new
channel order into its BN and consumers, give a shared group one layer's order so no gather is paid, and
replace the conv by one dense sub-conv per kept window (:func:`_sub_conv`).
"""

from __future__ import annotations

import torch
from torch import nn

from patterns.family import RealizeState, set_submodule
from patterns.pattern_conv import FilterShape, PatternConv


class KernelRewrite:
    """Folds (private layers) and replaces one conv by a :class:`PatternConv` on the realized copy.

    ``in_order``: the shapes cover runs of adjacent channels (block assignment), so the sub-convs follow the
    channel order run by run and neither a fold nor a gather is needed.
    """

    def __init__(self, layer: str, shapes: list[FilterShape], private: bool, in_order: bool = False) -> None:
        self.layer = layer
        self.shapes = shapes
        self.private = private
        self.in_order = in_order
        self.order: list[int] | None = None

    def _runs(self, state: RealizeState) -> list[tuple[FilterShape, list[int]]]:
        """(window, current positions) of each maximal run of adjacent channels sharing a window."""
        kept = state.kept_out.get(self.layer, list(range(len(self.shapes))))
        runs: list[tuple[FilterShape, list[int]]] = []
        for position, original in enumerate(kept):
            shape = self.shapes[original]
            if runs and runs[-1][0] == shape:
                runs[-1][1].append(position)
            else:
                runs.append((shape, [position]))
        return runs

    def _branches(self, state: RealizeState) -> tuple[list[tuple[FilterShape, list[int]]], list[int]]:
        """(window, current filter positions) per sub-conv in a fixed order, and dropped positions."""
        kept = state.kept_out.get(self.layer, list(range(len(self.shapes))))
        groups: dict[FilterShape, list[int]] = {}
        dropped = []
        for position, original in enumerate(kept):
            shape = self.shapes[original]
            if shape.dropped:
                dropped.append(position)
            else:
                groups.setdefault(shape, []).append(position)
        ordered = sorted(groups.items(), key=lambda item: (item[0].kh * item[0].kw, item[0].kh, item[0].r0,
                                                           item[0].c0))
        return ordered, dropped

    def fold(self, model: nn.Module, state: RealizeState) -> None:
        if not self.private or self.in_order:
            return
        branches, dropped = self._branches(state)
        if dropped:  # private drops were removed physically before this step
            raise RuntimeError(f"{self.layer}: dropped filters survived channel removal")
        self.order = [p for _, positions in branches for p in positions]
        if self.order == sorted(self.order):
            return
        perm = torch.tensor(self.order, dtype=torch.long)
        for member in state.groups[self.layer].members:
            module = model.get_submodule(member.name)
            if member.name == self.layer:
                continue
            if isinstance(module, nn.BatchNorm2d) and member.kind == "out":
                for tensor in (module.weight, module.bias, module.running_mean, module.running_var):
                    if tensor is not None:
                        tensor.data = tensor.data[perm].clone()
            elif isinstance(module, nn.Conv2d) and member.kind == "in" and module.groups == 1:
                module.weight.data = module.weight.data[:, perm].clone()
            else:
                raise RuntimeError(f"cannot fold channel order of {self.layer} into {member.name}")

    def pin(self, model: nn.Module, state: RealizeState) -> None:
        """A tiled shared layer keeps its group's channel order: no exact-mix layer may re-order the group
        (that would split the tiled layer's runs into many narrow sub-convs; the exact layer gathers)."""
        group = state.groups.get(self.layer)
        if self.in_order and group is not None:
            state.reordered.add(tuple(sorted(group.producers)))

    def fold_shared(self, model: nn.Module, state: RealizeState) -> None:
        """Give a shared (e.g. residual) group this layer's channel order everywhere, so no gather is paid.

        Every producer's filters, BN and consumer's input weights of the group are permuted the same way,
        which leaves the network's function unchanged; this layer's sub-convs then emit channels in group
        order. Only one layer per group can lead; other pattern layers in the group keep a gather.
        """
        if self.private or self.in_order:
            return
        group = state.groups.get(self.layer)
        key = tuple(sorted(group.producers)) if group else ()
        # A barrier group's members do not see the channels in one order (a shuffle sits between them).
        if group is None or group.barrier or key in state.reordered:
            return
        branches, dropped = self._branches(state)
        order = [p for _, positions in branches for p in positions] + dropped
        if order == sorted(order):
            return
        n = len(order)
        members = [(m, model.get_submodule(m.name)) for m in group.members]
        for member, module in members:  # check everything before touching anything
            if member.kind == "out" and isinstance(module, nn.Conv2d) and module.out_channels == n:
                continue
            if member.kind == "out" and isinstance(module, nn.BatchNorm2d) and module.num_features == n:
                continue
            if member.kind == "in" and isinstance(module, nn.Conv2d) and module.groups == 1 and \
                    module.in_channels == n:
                continue
            if member.kind == "in" and isinstance(module, nn.Linear) and module.in_features == n:
                continue
            return  # LayerNorm, concat, flatten of a spatial map...: keep the gather
        perm = torch.tensor(order, dtype=torch.long)
        for member, module in members:
            if member.kind == "out" and isinstance(module, nn.Conv2d):
                module.weight.data = module.weight.data[perm].clone()
                if module.bias is not None:
                    module.bias.data = module.bias.data[perm].clone()
                kept = state.kept_out.get(member.name, list(range(n)))
                state.kept_out[member.name] = [kept[p] for p in order]
            elif member.kind == "out":
                for tensor in (module.weight, module.bias, module.running_mean, module.running_var):
                    if tensor is not None:
                        tensor.data = tensor.data[perm].clone()
            else:
                module.weight.data = module.weight.data[:, perm].clone()
                kept = state.kept_in.get(member.name, list(range(n)))
                state.kept_in[member.name] = [kept[p] for p in order]
        state.reordered.add(key)
        state.notes.append(f"{self.layer}: channel order of its shared group re-ordered to match (no gather)")

    def replace(self, model: nn.Module, state: RealizeState) -> None:
        conv = model.get_submodule(self.layer)
        if self.in_order:
            self._replace_in_order(model, conv, state)
            return
        branches, dropped = self._branches(state)
        windows, convs, order = [], [], []
        for shape, positions in branches:
            windows.append((shape.r0, shape.c0))
            convs.append(_sub_conv(conv, shape, positions))
            order.extend(positions)
        gather = None
        if not self.private:
            source = {p: i for i, p in enumerate(order + dropped)}
            gather = torch.tensor([source[p] for p in range(len(order) + len(dropped))], dtype=torch.long)
            if gather.equal(torch.arange(len(gather))):
                gather = None
            if gather is not None:
                state.notes.append(f"{self.layer}: channel order shared with other layers; paying a gather")
        new = PatternConv(tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding), windows, convs,
                          zeros=len(dropped) if not self.private else 0, index=gather)
        new.train(conv.training)
        set_submodule(model, self.layer, new)

    def _replace_in_order(self, model: nn.Module, conv: nn.Conv2d, state: RealizeState) -> None:
        windows, convs, layout = [], [], []
        for shape, positions in self._runs(state):
            if shape.dropped:
                layout.append(-len(positions))
                continue
            layout.append(len(convs))
            windows.append((shape.r0, shape.c0))
            convs.append(_sub_conv(conv, shape, positions))
        new = PatternConv(tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding), windows, convs,
                          layout=tuple(layout))
        new.train(conv.training)
        set_submodule(model, self.layer, new)


def _sub_conv(conv: nn.Conv2d, shape: FilterShape, positions: list[int]) -> nn.Conv2d:
    """A dense conv holding filters ``positions`` of ``conv`` cut to ``shape``'s window (no padding)."""
    index = torch.tensor(positions, dtype=torch.long)
    weight = conv.weight.data[index][:, :, shape.r0:shape.r0 + shape.kh, shape.c0:shape.c0 + shape.kw]
    sub = nn.Conv2d(conv.in_channels, len(positions), (shape.kh, shape.kw), conv.stride, 0,
                    bias=conv.bias is not None)
    sub.weight.data = weight.clone().contiguous()
    if conv.bias is not None:
        sub.bias.data = conv.bias.data[index].clone()
    return sub
