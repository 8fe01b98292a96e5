"""``RemovedBlock``: what stands where pruning removed a residual block. It is an identity;
being its own class tells a checkpoint (and a latency profile) that the block's layers are
gone on purpose, not that the architecture differs."""

from __future__ import annotations

from torch import nn


class RemovedBlock(nn.Identity):
    """A residual block removed by pruning: returns its input."""
