from __future__ import annotations

import pytest
import torch
from torch import nn


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, so that parity and
    round-trip tests exercise them (fresh BN layers are an identity up to eps)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


class TinyNet(nn.Module):
    """conv-bn-relu, a residual add, a depthwise conv, pooling and a linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, groups=width, bias=False),
                                nn.BatchNorm2d(width), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.pw(self.dw(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def tiny_net(*, num_classes: int = 10, in_channels: int = 3, width: int = 8) -> nn.Module:
    """An importable 'module:callable' factory for checkpoint tests."""
    return TinyNet(num_classes=num_classes, in_channels=in_channels, width=width)


@pytest.fixture
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(TinyNet())
