"""Channel gates (METHOD.md): the parameters that produce a channel. If a channel's gate is
zero, its output is exactly zero everywhere, so removing it is lossless.

For a group with BatchNorms the gate of channel c is (gamma_c, beta_c) of every BN in the
group; for a group without BN it is the root layer's output filter c and bias c.

:class:`GroupGates` binds one group to one model (its parameter slices are looked up once),
which is what the training loop uses every step; the functions below are one-shot wrappers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from edgeprune.graph.blocks import BlockStructure
from edgeprune.graph.groups import GroupStructure


class GroupGates:
    """The gates of group ``g`` in ``model``: (parameter, its indices along dim 0, the group
    channel of each) slices. A BN that covers only part of the group (one branch of a
    concatenation) gates only those channels."""

    def __init__(self, model: nn.Module, g: GroupStructure) -> None:
        modules = dict(model.named_modules())
        self.group = g
        self.slices: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        # index tensors and gate matrices live where the parameters do (CPU or GPU)
        if g.bns:
            for path, local, root in g.bns:
                bn = modules[path]
                li = torch.tensor(local, dtype=torch.long, device=bn.weight.device)
                ri = torch.tensor(root, dtype=torch.long, device=bn.weight.device)
                self.slices += [(bn.weight, li, ri), (bn.bias, li, ri)]
        else:
            layer = modules[g.name]
            index = torch.arange(g.width, device=layer.weight.device)
            self.slices.append((layer.weight, index, index))
            if layer.bias is not None:
                self.slices.append((layer.bias, index, index))
        self.sizes = [p[0].numel() for p, _, _ in self.slices]
        self.device = self.slices[0][0].device

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for p, _, _ in self.slices]

    def matrix(self) -> torch.Tensor:
        """(width, gate size): row c is channel c's gate vector (zero where a parameter does
        not gate channel c)."""
        m = torch.zeros(self.group.width, sum(self.sizes), device=self.device)
        col = 0
        for (p, local, root), size in zip(self.slices, self.sizes, strict=True):
            m[root, col:col + size] = p.detach()[local].reshape(len(local), -1).float()
            col += size
        return m

    def norms(self) -> np.ndarray:
        return self.matrix().norm(dim=1).cpu().numpy()

    @torch.no_grad()
    def write(self, channels: Sequence[int] | torch.Tensor, rows: torch.Tensor) -> None:
        """Write gate rows ``rows`` (len(channels), gate size) for group channels ``channels``."""
        channels = torch.as_tensor(channels, dtype=torch.long).to(self.device)
        rows = rows.to(self.device)
        row_of = torch.full((self.group.width,), -1, dtype=torch.long, device=self.device)
        row_of[channels] = torch.arange(len(channels), device=self.device)
        col = 0
        for (p, local, root), size in zip(self.slices, self.sizes, strict=True):
            r = row_of[root]
            hit = r >= 0
            if bool(hit.any()):
                p[local[hit]] = rows[r[hit], col:col + size].reshape(-1, *p.shape[1:]).to(p.dtype)
            col += size

    def zero(self, channels: Sequence[int] | torch.Tensor) -> None:
        if len(channels):
            self.write(channels, torch.zeros(len(channels), sum(self.sizes)))

    def row_sizes(self) -> torch.Tensor:
        """How many parameters make up each channel's gate (2 per BatchNorm that covers it,
        or the filter size + bias for a group without BN)."""
        sizes = torch.zeros(self.group.width, device=self.device)
        for p, local, root in self.slices:
            sizes.index_add_(0, root, torch.full((len(local),), float(p[0].numel() if p.dim() > 1 else 1),
                                                 device=self.device))
        return sizes

    def taylor(self, ref: Sequence[torch.Tensor] | None = None) -> np.ndarray:
        """Label-free Taylor sensitivity of each channel after a backward pass:
        (sum over the channel's gate parameters of theta * dL/dtheta)^2 (Molchanov et al.).
        ``ref``: values to use for theta instead of the parameters' own, one tensor per
        parameter of :attr:`params` (e.g. the teacher's: the first-order loss change of
        restoring the channel to them, which stays informative while the gate shrinks)."""
        total = torch.zeros(self.group.width, dtype=torch.float64, device=self.device)
        for i, (p, local, root) in enumerate(self.slices):
            if p.grad is None:
                continue
            theta = p.detach() if ref is None else ref[i]
            prod = (theta * p.grad.detach())[local].reshape(len(local), -1).sum(dim=1)
            total.index_add_(0, root, prod.double())
        return (total ** 2).cpu().numpy()


class BlockGate:
    """The gate of a whole residual block (one row): every gamma and beta of the BatchNorm at
    the end of its branch. When it is zero the block is an identity and is removed. Same
    interface as :class:`GroupGates`, for a group of one unit."""

    def __init__(self, model: nn.Module, b: BlockStructure) -> None:
        bn = dict(model.named_modules())[b.gate]
        self.group = b
        self.bn = bn
        self.device = bn.weight.device

    @property
    def params(self) -> list[torch.Tensor]:
        return [self.bn.weight, self.bn.bias]

    def matrix(self) -> torch.Tensor:
        return torch.cat([p.detach().float() for p in self.params]).reshape(1, -1)

    def norms(self) -> np.ndarray:
        return self.matrix().norm(dim=1).cpu().numpy()

    @torch.no_grad()
    def write(self, channels: Sequence[int] | torch.Tensor, rows: torch.Tensor) -> None:
        if len(channels):
            c = self.bn.num_features
            row = rows[0].to(self.device)
            self.bn.weight.copy_(row[:c])
            self.bn.bias.copy_(row[c:])

    def zero(self, channels: Sequence[int] | torch.Tensor) -> None:
        if len(channels):
            self.write(channels, torch.zeros(1, 2 * self.bn.num_features))

    def row_sizes(self) -> torch.Tensor:
        return torch.full((1,), 2.0 * self.bn.num_features, device=self.device)

    def taylor(self, ref: Sequence[torch.Tensor] | None = None) -> np.ndarray:
        """(sum over the block's gate parameters of theta * dL/dtheta)^2: the first-order
        loss change of removing the block, squared, like a channel's score."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, p in enumerate(self.params):
            if p.grad is not None:
                theta = p.detach() if ref is None else ref[i]
                total += (theta * p.grad.detach()).sum().double()
        return np.array([float(total) ** 2])


def gates_of(model: nn.Module, g: GroupStructure | BlockStructure) -> GroupGates | BlockGate:
    """The gates of a channel group or of a residual block, bound to ``model``."""
    return BlockGate(model, g) if isinstance(g, BlockStructure) else GroupGates(model, g)


def gate_matrix(model: nn.Module, g: GroupStructure) -> torch.Tensor:
    return GroupGates(model, g).matrix()


def gate_norms(model: nn.Module, g: GroupStructure) -> np.ndarray:
    return GroupGates(model, g).norms()


def set_gates(model: nn.Module, g: GroupStructure, channels: Sequence[int], gates: torch.Tensor) -> None:
    """Write gate rows ``gates`` (len(channels), gate size) back for group ``channels``."""
    GroupGates(model, g).write(channels, gates)


def zero_gates(model: nn.Module, g: GroupStructure, channels: Sequence[int]) -> None:
    GroupGates(model, g).zero(channels)


def taylor_scores(model: nn.Module, g: GroupStructure) -> np.ndarray:
    return GroupGates(model, g).taylor()


def zero_channel_indices(model: nn.Module, groups: Sequence[GroupStructure]) -> Mapping[str, list[int]]:
    """Channels whose gate is exactly zero, per group."""
    return {g.name: np.flatnonzero(gate_norms(model, g) == 0).tolist() for g in groups}
