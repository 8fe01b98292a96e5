"""VGG-Small as used by the CIFAR pruning/quantisation literature (LQ-Nets and followers):
conv 128-128-M-256-256-M-512-512-M, each conv followed by BatchNorm and ReLU, then one
linear classifier on the flattened 512 x 4 x 4 map (for 32x32 inputs)."""

from __future__ import annotations

import torch
from torch import nn

from edgeprune.models.registry import register

_CFG = (128, 128, "M", 256, 256, "M", 512, 512, "M")


class VGGSmall(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, 1, 1, bias=False), nn.BatchNorm2d(int(v)),
                           nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512 * 4 * 4, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register("vgg_small")
def vgg_small(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return VGGSmall(num_classes=num_classes, in_channels=in_channels)
