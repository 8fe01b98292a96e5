"""An architecture of a user's own, not in edgeprune's zoo, for the latency predictor's
benchmark: what a new user brings (a hard-swish stem, an inverted residual block with a
depthwise conv, two branches concatenated, a squeeze-excitation gate, a strided depthwise
stage, a linear head). It is small (about 0.05-0.1 ms on a desktop CPU), so the per-invoke
overhead is a large share of its latency.

    from _user_net import UserNet      # scripts/ on sys.path, as the benchmarks run
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

NAME = "user_net"


def _cbn(c_in: int, c_out: int, k: int = 1, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]


class UserNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_cbn(3, 24, 3, 2), nn.Hardswish())                     # 16x16
        self.block = nn.Sequential(*_cbn(24, 48), nn.ReLU(),                                # expand
                                   *_cbn(48, 48, 3, groups=48), nn.ReLU(),                  # depthwise
                                   *_cbn(48, 24))                                           # project
        self.a = nn.Sequential(*_cbn(24, 24), nn.ReLU())
        self.b = nn.Sequential(*_cbn(24, 24, 3), nn.ReLU())
        self.se1 = nn.Conv2d(48, 12, 1)
        self.se2 = nn.Conv2d(12, 48, 1)
        self.down = nn.Sequential(*_cbn(48, 48, 3, 2, groups=48), nn.Hardswish(),           # 8x8
                                  *_cbn(48, 64), nn.Hardswish())
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.block(x)
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        # pooling as adaptive_avg_pool2d: litert-torch leaves a TRANSPOSE around a plain mean
        y = y * F.hardsigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(y, 1)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.down(y), 1), 1))
