"""Coupled channel groups of a model, from one walk of Torch-Pruning's DependencyGraph.

A *channel group* is a set of channels that must be removed together: the output channels of
a conv/linear (the group's root) plus everything coupled to them (the following BatchNorm, the
next layers' input channels, every layer on the same residual stream, a depthwise conv's
channels). Groups are named by their root's module path. The classifier's outputs (the
model's output) are never a group.

:func:`group_structure` is the only place that walks the graph's groups. For each group it
lists the conv/linear layers whose output or input channels it is (with a multiplier: a
linear head after a flatten of C x H x W takes H*W features per channel), and the parameters
that gate it (METHOD.md: the BatchNorm gamma and beta of every BN in the group). Physical
removal (:mod:`edgeprune.graph.surgery`) and width pricing (:mod:`edgeprune.graph.widths`)
work from what it returns.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


def dependency_graph(model: nn.Module, example_input: torch.Tensor):
    """Torch-Pruning's graph of ``model`` itself (it traces a forward pass and sets
    requires_grad: callers that must not touch a model's mode, BatchNorm statistics or
    parameter flags pass a copy)."""
    import torch_pruning as tp

    for p in model.parameters():  # the graph is traced through autograd: a frozen model
        p.requires_grad_(True)    # (requires_grad=False) would show no dependencies
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)


def output_layers(model: nn.Module, example_input: torch.Tensor) -> list[nn.Module]:
    """Conv/linear layers whose output is the model's output (their out-channels are fixed)."""
    outs: dict[int, nn.Module] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: outs.__setitem__(id(o), mod))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        was = model.training
        model.eval()
        with torch.no_grad():
            y = model(example_input)
        model.train(was)
    finally:
        for h in hooks:
            h.remove()
    ys = y if isinstance(y, (tuple, list)) else [y]
    return [outs[id(t)] for t in ys if id(t) in outs]


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

    @property
    def members(self) -> tuple[str, ...]:
        """Module paths of every conv/linear/BatchNorm the group touches."""
        return tuple(dict.fromkeys([*(p for p, _ in self.outs), *(p for p, _ in self.ins),
                                    *(p for p, _, _ in self.bns)]))


def group_structure(model: nn.Module, example_input: torch.Tensor) -> list[GroupStructure]:
    """The channel groups of ``model`` (not modified: traced on an eval-mode copy)."""
    model = copy.deepcopy(model).eval()
    dg = dependency_graph(model, example_input)
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
