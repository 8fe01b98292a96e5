"""Small models, data and settings the tests share (import them from here, never from
another test module)."""

from __future__ import annotations

import pickle

import numpy as np
import torch
from torch import nn

from edgeprune.pruning import PruneConfig


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


class CatSE(torch.nn.Module):
    """Two branches concatenated, a squeeze-excitation gate, then a conv and a linear head."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.se1 = nn.Conv2d(16, 4, 1)
        self.se2 = nn.Conv2d(4, 16, 1)
        self.c = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        w = torch.sigmoid(self.se2(torch.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        y = self.c(y * w)
        return self.fc(y.mean((2, 3)))


FAST = PruneConfig(steps=30, update_interval=4, lr=0.01)


class SmallCNN(nn.Module):
    """Three prunable groups (16, 16, 32 channels) at two resolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                nn.MaxPool2d(2))
        self.c3 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.c3(self.c2(self.c1(x))).mean((2, 3)))


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(SmallCNN())


def random_batches(n: int = 10, batch: int = 16, hw: int = 16, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, hw, hw, generator=g) for _ in range(n)]


def write_cifar10(folder, per_batch=4):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
             b"labels": rng.integers(0, 10, per_batch).tolist(), b"batch_label": name.encode()}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return folder


def committed_profile_here(profile_path, tmp_path):
    """A committed profile, its host rewritten to this machine's: for tests that only read
    the tables (which machine they describe is the profile's own business, tested in
    tests/profiling/test_profile.py). Returns the rewritten file's path."""
    import json

    from edgeprune.profiling.latency import host_identity

    d = json.loads(profile_path.read_text())
    d["host"] = host_identity()
    out = tmp_path / f"here-{profile_path.parent.name}-{profile_path.name}"
    out.write_text(json.dumps(d))
    return out
