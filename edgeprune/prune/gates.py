"""Channel gates (METHOD.md): the parameters that produce a channel. If a channel's gate is
zero, its output is exactly zero everywhere, so removing it is lossless.

For a group with BatchNorms the gate of channel c is (gamma_c, beta_c) of every BN in the
group; for a group without BN it is the root layer's output filter c and bias c.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from edgeprune.prune.structure import GroupStructure


def _gate_slices(model: nn.Module, g: GroupStructure
                 ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(parameter, its indices along dim 0, the group channel of each) triples that make up
    the gates. A BN that covers only part of the group (one branch of a concatenation)
    gates only those channels."""
    modules = dict(model.named_modules())
    out = []
    if g.bns:
        for path, local, root in g.bns:
            bn = modules[path]
            li, ri = torch.tensor(local, dtype=torch.long), torch.tensor(root, dtype=torch.long)
            out += [(bn.weight, li, ri), (bn.bias, li, ri)]
    else:
        root_layer = modules[g.name]
        index = torch.arange(g.width)
        out.append((root_layer.weight, index, index))
        if root_layer.bias is not None:
            out.append((root_layer.bias, index, index))
    return out


def gate_matrix(model: nn.Module, g: GroupStructure) -> torch.Tensor:
    """(width, gate size) matrix: row c is channel c's gate vector (zero where a parameter
    does not gate channel c)."""
    slices = _gate_slices(model, g)
    sizes = [p[0].numel() for p, _, _ in slices]
    m = torch.zeros(g.width, sum(sizes))
    col = 0
    for (p, local, root), size in zip(slices, sizes, strict=True):
        m[root, col:col + size] = p.detach()[local].reshape(len(local), -1).float()
        col += size
    return m


def gate_norms(model: nn.Module, g: GroupStructure) -> np.ndarray:
    return gate_matrix(model, g).norm(dim=1).numpy()


@torch.no_grad()
def set_gates(model: nn.Module, g: GroupStructure, channels: Sequence[int], gates: torch.Tensor) -> None:
    """Write gate rows ``gates`` (len(channels), gate size) back for group ``channels``."""
    row_of = {int(c): i for i, c in enumerate(channels)}
    col = 0
    for p, local, root in _gate_slices(model, g):
        size = p[0].numel()
        for li, ri in zip(local.tolist(), root.tolist(), strict=True):
            if ri in row_of:
                p[li] = gates[row_of[ri], col:col + size].reshape(p.shape[1:]).to(p.dtype)
        col += size


def zero_gates(model: nn.Module, g: GroupStructure, channels: Sequence[int]) -> None:
    if len(channels):
        set_gates(model, g, channels, torch.zeros(len(channels), gate_matrix(model, g).shape[1]))


def taylor_scores(model: nn.Module, g: GroupStructure) -> np.ndarray:
    """Label-free Taylor sensitivity of each channel after a backward pass:
    (sum over the channel's gate parameters of theta * dL/dtheta)^2 (Molchanov et al.)."""
    total = torch.zeros(g.width, dtype=torch.float64)
    for p, local, root in _gate_slices(model, g):
        if p.grad is None:
            continue
        prod = (p.detach() * p.grad.detach())[local].reshape(len(local), -1).sum(dim=1)
        total.index_add_(0, root, prod.double())
    return (total ** 2).numpy()


def zero_channel_indices(model: nn.Module, groups: Sequence[GroupStructure]) -> Mapping[str, list[int]]:
    """Channels whose gate is exactly zero, per group."""
    return {g.name: np.flatnonzero(gate_norms(model, g) == 0).tolist() for g in groups}
