"""The smooth, label-free loss of METHOD.md for student k:

    L_k = lambda1 * KD(teacher -> k) + lambda2 * sum_j AT(teacher_j, k_j)
          + lambda3 * mean over other students l of KD(stopgrad(l) -> k)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)), mean over the batch.
    The teacher side carries no gradient."""
    t = F.log_softmax(teacher_logits.detach() / tau, dim=1)
    s = F.log_softmax(student_logits / tau, dim=1)
    return tau * tau * F.kl_div(s, t, log_target=True, reduction="batchmean")


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """Width-independent spatial attention: mean over channels of F^2, flattened and
    L2-normalised per sample (Zagoruyko & Komodakis). Compares maps of different widths."""
    a = feature.pow(2).mean(dim=1).flatten(1)
    return F.normalize(a, dim=1)


def attention_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_j mean over the batch and the map's positions of (A(F_T^j) - A(F_k^j))^2.

    The mean over positions is the attention-transfer reference code's scale, at which
    lambda2 = 1e3 is its tuned weight (a sum over 32x32 positions would be 1024x larger)."""
    if len(student_feats) != len(teacher_feats):
        raise ValueError(f"{len(student_feats)} student features vs {len(teacher_feats)} teacher features")
    total = torch.zeros(())
    for s, t in zip(student_feats, teacher_feats, strict=True):
        diff = attention_map(s) - attention_map(t.detach())
        total = total + diff.pow(2).mean()
    return total


def mutual_loss(student_logits: torch.Tensor, peers: Sequence[torch.Tensor], tau: float) -> torch.Tensor:
    """Mean KD from each peer student (no gradient into the peers)."""
    if not peers:
        return torch.zeros(())
    return sum(kd_loss(student_logits, p, tau) for p in peers) / len(peers)
