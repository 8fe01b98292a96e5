"""The proximal (ISTA) step of METHOD.md: group soft-thresholding of channel gates."""

from __future__ import annotations

import torch


def group_soft_threshold(gates: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """Rows of ``gates`` (one row = one channel's gate vector) shrunk toward zero:

        g <- g * max(0, 1 - threshold / ||g||_2)

    A row whose norm is at most ``threshold`` becomes exactly zero. ``threshold`` is
    ``eta * lambda_s`` (learning rate times the sparsity weight): one number, or one per row.
    """
    threshold = torch.as_tensor(threshold, dtype=gates.dtype, device=gates.device)
    if bool((threshold < 0).any()):
        raise ValueError(f"threshold={threshold} must be >= 0")
    if threshold.dim() == 1:
        threshold = threshold.unsqueeze(1)
    norms = gates.norm(dim=1, keepdim=True)
    scale = torch.clamp(1 - threshold / norms.clamp_min(torch.finfo(gates.dtype).tiny), min=0.0)
    return gates * scale
