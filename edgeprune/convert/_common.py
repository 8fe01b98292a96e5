from __future__ import annotations

import copy

import torch
from torch import nn

from edgeprune.errors import ExportError


def prepare(model: nn.Module, example_input: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """An eval-mode copy of ``model`` (the caller's is untouched) and a checked float input."""
    if not isinstance(example_input, torch.Tensor) or example_input.ndim != 4:
        shape = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else None
        raise ExportError(
            f"example_input must be a 4-D NCHW float tensor, got {type(example_input).__name__} "
            f"{shape}; pass e.g. torch.zeros(1, 3, 32, 32)"
        )
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m, example_input.detach().float().contiguous()
