import pytest
import torch
from torch import nn

from edgeprune.convert._rewrite import hwc_flatten


class Head(nn.Module):
    def __init__(self, style):
        super().__init__()
        self.style = style
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        y = self.conv(x)
        if self.style == "func":
            y = torch.flatten(y, 1)
        elif self.style == "view":
            y = y.view(y.size(0), -1)
        else:
            y = self.flat(y)
        return self.fc(y)


@pytest.mark.parametrize("style", ["func", "view", "module"])
def test_hwc_flatten_is_exact_and_moves_channels_last(style):
    torch.manual_seed(0)
    m = Head(style).eval()
    x = torch.randn(2, 3, 4, 4)
    ref = m(x)
    w_before = m.fc.weight.clone()
    out = hwc_flatten(m, x)
    assert out is not m
    assert torch.allclose(out(x), ref, atol=1e-6)
    permutes = [n for n in out.graph.nodes if n.target == "permute"]
    assert len(permutes) == 1 and permutes[0].args[1:] == (0, 2, 3, 1)
    # weight column j of the rewritten head is (h, w, c) where the original was (c, h, w)
    assert torch.equal(out.fc.weight[:, 1], w_before[:, 16])  # (h=0, w=0, c=1) <- (c=1, 0, 0)


def test_no_flatten_means_no_rewrite():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert hwc_flatten(m, torch.randn(1, 3, 8, 8)) is m  # 1x1 maps need no reordering


def test_untraceable_model_is_returned_unchanged():
    class Dyn(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow defeats symbolic tracing
                return x
            return -x

    m = Dyn()
    assert hwc_flatten(m, torch.randn(1, 3, 4, 4)) is m
