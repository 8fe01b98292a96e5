"""Physical channel removal over Torch-Pruning's DependencyGraph.

Torch-Pruning silently mis-prunes some structures (channel chunk/split) and raises on others;
every removal here is followed by a forward pass, and a failure names the group.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from edgeprune.errors import ConfigError, EdgepruneError
from edgeprune.graph.groups import dependency_graph


class PruningStructureError(EdgepruneError):
    """A structure cannot be pruned safely; the message names the module."""


def remove_channels(model: nn.Module, example_input: torch.Tensor,
                    remove: Mapping[str, Sequence[int]]) -> nn.Module:
    """A copy of ``model`` with channels ``remove[group_name]`` physically removed.

    The copy computes the same function as ``model`` with those channels' outputs forced
    to zero only when their gates are zero: use it on channels that are exactly zero for a
    lossless result, or on any channels for a structurally smaller model.
    """

    model = copy.deepcopy(model)
    dg = dependency_graph(model, example_input)
    modules = dict(model.named_modules())
    for gname, idxs in remove.items():
        idxs = sorted({int(i) for i in idxs})
        if not idxs:
            continue
        root = modules.get(gname)
        if root is None:
            raise ConfigError(f"no channel group {gname!r}; groups are named by their root layer")
        pruner = dg.get_pruner_of_module(root)
        width = pruner.get_out_channels(root)
        if idxs[0] < 0 or idxs[-1] >= width or len(idxs) >= width:
            raise ConfigError(f"group {gname!r} has {width} channels; cannot remove {len(idxs)} "
                              f"(indices {idxs[0]}..{idxs[-1]}): at least one channel must stay")
        group = dg.get_pruning_group(root, pruner.prune_out_channels, idxs=idxs)
        if not dg.check_pruning_group(group):
            raise PruningStructureError(f"Torch-Pruning refuses to prune group {gname!r}")
        try:
            group.prune()
        except (IndexError, RuntimeError, ValueError) as e:
            raise PruningStructureError(f"removing channels of group {gname!r} failed: {e}") from e
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input)
    except RuntimeError as e:  # e.g. a channel split/chunk that Torch-Pruning sliced wrongly
        raise PruningStructureError(
            f"after removing channels from groups {sorted(remove)} the model no longer runs ({e}); "
            "a module in those groups (channel split/chunk/pad) is not supported"
        ) from e
    model.train(was)
    for p in model.parameters():
        p.grad = None
    return model


def shrink_to_widths(model: nn.Module, example_input: torch.Tensor,
                     widths: Mapping[str, int]) -> nn.Module:
    """A copy of ``model`` whose groups keep ``widths[name]`` channels: the ones with the
    largest L1 norm of the root's weights (a structural variant for profiling and benchmarks)."""
    modules = dict(model.named_modules())
    remove = {}
    for gname, keep in widths.items():
        w = modules[gname].weight.detach()
        score = w.abs().reshape(w.shape[0], -1).sum(1)
        if keep < 1 or keep > w.shape[0]:
            raise ConfigError(f"width {keep} for group {gname!r} is invalid; need 1..{w.shape[0]}")
        order = torch.argsort(score, descending=True)
        remove[gname] = order[keep:].tolist()
    return remove_channels(model, example_input, remove)
