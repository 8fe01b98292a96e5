"""The layers a latency table covers, read from a model by tracing one forward pass.

A *unit* is one conv (BatchNorm folded, activation fused by every runtime edgeprune targets)
or linear layer, keyed by its torch module path. Its *signature* is everything that shapes
its cost except its widths: kind, kernel, stride, padding, dilation, input H x W. Units with
one signature share one table over (c_in, c_out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgeprune.errors import ProfileError


@dataclass(frozen=True)
class LayerUnit:
    path: str
    kind: str  # "conv" | "dwconv" | "linear"
    signature: str
    c_in: int
    c_out: int
    in_hw: tuple[int, int]  # (1, 1) for linear
    out_hw: tuple[int, int]
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    fixed_in: bool = False  # reads the model input: c_in never changes
    fixed_out: bool = False  # writes the model output: c_out never changes

    @property
    def out_elements(self) -> int:
        return self.c_out * self.out_hw[0] * self.out_hw[1]

    def macs(self, c_in: int | None = None, c_out: int | None = None) -> int:
        ci = self.c_in if c_in is None else c_in  # 0: a removed layer
        co = self.c_out if c_out is None else c_out
        hw = self.out_hw[0] * self.out_hw[1]
        if self.kind == "dwconv":
            return co * hw * self.kernel[0] * self.kernel[1]
        return ci * co * hw * self.kernel[0] * self.kernel[1]


def model_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of every conv/linear of ``model`` on one input of ``input_shape``
    ((C, H, W) or (N, C, H, W) with N = 1)."""
    return int(sum(u.macs() for u in layer_units(model, input_shape)))


def signature_of(kind: str, kernel, stride, padding, dilation, in_hw) -> str:
    if kind == "linear":
        return "linear"
    k, s, p, d = (f"{a}x{b}" for a, b in (kernel, stride, padding, dilation))
    return f"{kind}:k{k}:s{s}:p{p}:d{d}:in{in_hw[0]}x{in_hw[1]}"


def layer_units(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerUnit]:
    """Every conv/linear of ``model`` with the shapes it sees on an input of ``input_shape``
    ((C, H, W) or (N, C, H, W)), in execution order."""
    shape = tuple(input_shape)
    first = next(model.parameters(), None)
    x = torch.zeros((1, *shape) if len(shape) == 3 else shape,
                    device=first.device if first is not None else "cpu")
    seen: dict[nn.Module, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    reads_input: set[nn.Module] = set()
    outputs: dict[int, nn.Module] = {}
    names = {m: n for n, m in model.named_modules()}

    def hook(mod, inp, out):
        if mod not in seen:
            seen[mod] = (tuple(inp[0].shape), tuple(out.shape))
            if inp[0] is x:
                reads_input.add(mod)
            outputs[id(out)] = mod

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            y = model(x)
        writes_output = {outputs[id(y)]} if id(y) in outputs else set()
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    units = []
    for m, (ishape, oshape) in seen.items():
        path = names[m]
        if isinstance(m, nn.Conv2d):
            if m.groups == 1:
                kind = "conv"
            elif m.groups == m.in_channels == m.out_channels:
                kind = "dwconv"
            else:
                raise ProfileError(f"layer {path!r} is a grouped conv (groups={m.groups}, "
                                   f"{m.in_channels}->{m.out_channels}); only dense and depthwise "
                                   "convs can be profiled")
            if isinstance(m.padding, str):
                raise ProfileError(f"layer {path!r} uses padding={m.padding!r}; use explicit padding")
            args = (tuple(m.kernel_size), tuple(m.stride), tuple(m.padding), tuple(m.dilation))
            in_hw, out_hw = (ishape[2], ishape[3]), (oshape[2], oshape[3])
            units.append(LayerUnit(path, kind, signature_of(kind, *args, in_hw), m.in_channels,
                                   m.out_channels, in_hw, out_hw, *args,
                                   fixed_in=m in reads_input, fixed_out=m in writes_output))
        else:
            if len(ishape) != 2:
                raise ProfileError(f"linear layer {path!r} sees a {len(ishape)}-D input; only "
                                   "classifier heads on flattened features can be profiled")
            units.append(LayerUnit(path, "linear", "linear", m.in_features, m.out_features,
                                   (1, 1), (1, 1), fixed_in=m in reads_input,
                                   fixed_out=m in writes_output))
    return units
