"""Which layer widths each channel group sets, read from Torch-Pruning's dependency graph.

``group_structure(model, x)`` lists, per prunable group, the conv/linear layers whose output
or input channels it is (with a multiplier: a linear head after a flatten of C x H x W takes
H*W features per channel), and the parameters that gate it (METHOD.md: the BatchNorm gamma and
beta of every BN in the group, or the root's output filters and bias when the group has no
BN). ``layer_widths`` turns hypothetical group widths into every layer's (c_in, c_out), which
is what a latency profile prices (a layer holding a share of a group, such as one branch of
a concatenation, is priced at that share of the group's width).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from edgeprune.channels import _graph, output_layers


@dataclass(frozen=True)
class GroupStructure:
    name: str  # root layer's module path
    width: int  # channels now
    # (conv/linear path, its channels per group channel): 16 for a linear head after a
    # 4x4 flatten, 0.5 for one of two concatenated branches
    outs: tuple[tuple[str, float], ...]  # layers whose output channels are (part of) the group
    ins: tuple[tuple[str, float], ...]  # layers whose input channels are (part of) the group
    # (BatchNorm path, its channel indices, the group channel of each): the gates
    bns: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]


def group_structure(model: nn.Module, example_input: torch.Tensor) -> list[GroupStructure]:
    """The channel groups of ``model`` (not modified: traced on an eval-mode copy)."""
    model = copy.deepcopy(model).eval()
    dg = _graph(model, example_input)
    names = {m: n for n, m in model.named_modules()}
    out = []
    for g in dg.get_all_groups(ignored_layers=output_layers(model, example_input)):
        width = len(g[0].idxs)
        outs: dict[str, float] = {}
        ins: dict[str, float] = {}
        bns: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        for i in range(len(g)):
            item = g[i]
            mod = item.dep.target.module
            path = names.get(mod)
            if path is None:
                continue
            share = len(item.idxs) / width
            if isinstance(mod, nn.BatchNorm2d):
                bns.setdefault(path, (tuple(int(v) for v in item.idxs),
                                      tuple(int(v) for v in item.root_idxs)))
            elif isinstance(mod, (nn.Conv2d, nn.Linear)):
                side = outs if dg.is_out_channel_pruning_fn(item.dep.handler) else ins
                side[path] = share
        out.append(GroupStructure(names[g[0].dep.target.module], width, tuple(outs.items()),
                                  tuple(ins.items()),
                                  tuple((p, local, root) for p, (local, root) in bns.items())))
    return out


class WidthMap:
    """Every conv/linear's (c_in, c_out) as a function of group widths: ``wm({g: width})``
    (groups not named keep their width; layers in no group keep theirs). Built once per
    model, so a selection loop can price thousands of candidate widths cheaply."""

    def __init__(self, model: nn.Module, groups: list[GroupStructure]) -> None:
        self.base: dict[str, tuple[int, int]] = {}
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                self.base[name] = (m.in_channels, m.out_channels)
            elif isinstance(m, nn.Linear):
                self.base[name] = (m.in_features, m.out_features)
        modules = dict(model.named_modules())
        # per group: (layer path, side 0=in 1=out, share, depthwise)
        self.effects: dict[str, list[tuple[str, int, float, bool]]] = {}
        for g in groups:
            eff = []
            for path, share in g.outs:
                m = modules[path]
                dw = isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
                eff.append((path, 1, share, dw))
            eff += [(path, 0, share, False) for path, share in g.ins]
            self.effects[g.name] = eff

    def __call__(self, group_widths: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        widths = dict(self.base)
        for gname, w in group_widths.items():
            for path, side, share, dw in self.effects[gname]:
                n = max(1, round(int(w) * share))
                ci, co = widths[path]
                if side == 1:
                    widths[path] = (n, n) if dw else (ci, n)  # depthwise: in and out move together
                else:
                    widths[path] = (n, co)
        return widths


def layer_widths(model: nn.Module, groups: list[GroupStructure],
                 group_widths: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """(c_in, c_out) of every conv/linear when each group ``g`` has ``group_widths[g]``
    channels (groups not named keep their width; layers in no group keep theirs)."""
    return WidthMap(model, groups)(group_widths)
