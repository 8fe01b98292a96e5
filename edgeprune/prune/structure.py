"""Which layer widths each channel group sets, read from Torch-Pruning's dependency graph.

``group_structure(model, x)`` lists, per prunable group, the conv/linear layers whose output
or input channels it is (with a multiplier: a linear head after a flatten of C x H x W takes
H*W features per channel), and the parameters that gate it (METHOD.md: the BatchNorm gamma and
beta of every BN in the group, or the root's output filters and bias when the group has no
BN). ``layer_widths`` turns hypothetical group widths into every layer's (c_in, c_out), which
is what a latency profile prices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from edgeprune.channels import _graph, output_layers


@dataclass(frozen=True)
class GroupStructure:
    name: str  # root layer's module path
    width: int  # channels now
    outs: tuple[tuple[str, int], ...]  # (conv/linear path, features per channel) producing it
    ins: tuple[tuple[str, int], ...]  # (conv/linear path, features per channel) consuming it
    bns: tuple[str, ...]  # BatchNorm paths in the group (their gamma/beta are the gates)


def group_structure(model: nn.Module, example_input: torch.Tensor) -> list[GroupStructure]:
    dg = _graph(model, example_input)
    names = {m: n for n, m in model.named_modules()}
    out = []
    for g in dg.get_all_groups(ignored_layers=output_layers(model, example_input)):
        width = len(g[0].idxs)
        outs, ins, bns = {}, {}, []
        for dep, idxs in g:
            mod = dep.target.module
            path = names.get(mod)
            if path is None:
                continue
            mult = max(1, len(idxs) // width)
            if isinstance(mod, nn.BatchNorm2d):
                bns.append(path)
            elif isinstance(mod, (nn.Conv2d, nn.Linear)):
                (outs if dg.is_out_channel_pruning_fn(dep.handler) else ins)[path] = mult
        out.append(GroupStructure(names[g[0].dep.target.module], width, tuple(outs.items()),
                                  tuple(ins.items()), tuple(dict.fromkeys(bns))))
    return out


def layer_widths(model: nn.Module, groups: list[GroupStructure],
                 group_widths: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """(c_in, c_out) of every conv/linear when each group ``g`` has ``group_widths[g]``
    channels (groups not named keep their width; layers in no group keep theirs)."""
    widths: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            widths[name] = [m.in_channels, m.out_channels]
        elif isinstance(m, nn.Linear):
            widths[name] = [m.in_features, m.out_features]
    modules = dict(model.named_modules())
    for g in groups:
        w = int(group_widths.get(g.name, g.width))
        for path, mult in g.outs:
            widths[path][1] = w * mult
            m = modules[path]
            if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels:
                widths[path][0] = w * mult  # depthwise: in and out channels move together
        for path, mult in g.ins:
            widths[path][0] = w * mult
    return {k: (v[0], v[1]) for k, v in widths.items()}
