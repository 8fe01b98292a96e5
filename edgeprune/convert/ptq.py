"""Label-free steps before int8 conversion that make the int8 model agree better with PyTorch.

They change a copy of the float model, using only unlabeled calibration images, so that the
per-channel symmetric int8 weights the converter makes from it (litert-torch's PT2E quantizer:
``scale = max|W_c| / 127``, round to nearest, clamp to [-127, 127]) lose less:

- ``"cle"``: cross-layer equalization (Nagel et al., "Data-Free Quantization Through Weight
  Equalization and Bias Correction", ICCV 2019). For a conv A followed, through ReLU and
  pooling only, by a conv or linear B, A's output channel i is divided by s_i and B's input
  channel i multiplied by it, ``s_i = sqrt(r_A,i / r_B,i)`` (r: largest |weight| of the
  channel), so both ranges become ``sqrt(r_A,i r_B,i)``. Exact in float (ReLU, max and average
  pooling commute with a positive scale). Pairs through ReLU6 or any other op are left alone.
- ``"adaround"``: per layer, in execution order, learn whether each weight rounds up or down
  (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization", ICML 2020)
  so the layer's output, fed the inputs it gets from the layers already rounded, reproduces the
  float model's output. The weights are then set on the int8 grid, which the converter's
  rounding keeps exactly.
- ``"bias_correction"``: per layer, in execution order, the bias absorbs the mean per-channel
  difference between the float model's output and the output the layer gives with int8
  weights and the inputs of the already-corrected layers (empirical bias correction, same
  paper as CLE).

BatchNorm is folded into the conv before (the converter folds it anyway): the weights these
steps see are the ones that get quantized. Bias absorption (DFQ's other step) is not done: it
moves a constant through the next layer, which is exact only where that layer has no zero
padding, and every 3x3 conv here pads.

Activations stay in float while these steps run; the converter's activation ranges are
calibrated afterwards on the result.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.errors import ExportError

PTQ_STEPS = ("cle", "adaround", "bias_correction")  # applied in this order
QMAX = 127  # symmetric per-channel int8 weights, as PT2E's symmetric config
_ZETA, _GAMMA = 1.1, -0.1  # AdaRound's rectified sigmoid stretch


@dataclass(frozen=True)
class PTQReport:
    """What :func:`prepare_int8` did: the steps, the equalized pairs and the layers it
    rounded or corrected, with the weight-only reconstruction error before and after."""

    steps: tuple[str, ...]
    images: int
    equalized_pairs: int = 0
    layers: int = 0
    # mean over layers of the squared output error with int8 weights, relative to the output's
    # mean square, before (round to nearest, no correction) and after the steps
    rel_error_before: float | None = None
    rel_error_after: float | None = None


def check_ptq_steps(steps: Sequence[str], name: str = "ptq") -> tuple[str, ...]:
    """``steps`` as a tuple in the order they run; raise on an unknown or repeated name."""
    if isinstance(steps, str):
        raise ExportError(f"{name}={steps!r} must be a list of step names, e.g. [{steps!r}]")
    bad = [s for s in steps if s not in PTQ_STEPS]
    if bad or len(set(steps)) != len(steps):
        raise ExportError(f"{name}={list(steps)!r} is invalid; choose distinct steps from {list(PTQ_STEPS)}")
    return tuple(s for s in PTQ_STEPS if s in steps)


def prepare_int8(model: nn.Module, images: torch.Tensor, steps: Sequence[str], *,
                 iters: int = 500, batch: int = 16, seed: int = 0,
                 on_layer: Callable[[int, int], None] | None = None) -> tuple[nn.Module, PTQReport]:
    """A copy of ``model`` (eval, BatchNorm folded) with ``steps`` applied, using ``images``
    (normalised NCHW calibration inputs, no labels) and the report. ``iters`` and ``batch``:
    AdaRound's optimisation steps per layer and images per step."""
    steps = check_ptq_steps(steps)
    m = fold_batchnorm(model)
    pairs = 0
    if "cle" in steps:
        pairs = equalize(m)
    layers = [(n, mod) for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    report = PTQReport(steps, len(images), pairs, len(layers))
    if not ({"adaround", "bias_correction"} & set(steps)):
        return m, report
    ref = copy.deepcopy(m)  # the float model whose layer outputs are the target
    sim = copy.deepcopy(m)  # the layers done so far with their int8 weights: what the int8 model feeds on
    sim_layers, ref_layers = dict(sim.named_modules()), dict(ref.named_modules())
    gen = torch.Generator().manual_seed(seed)
    before, after = [], []
    for k, (name, layer) in enumerate(layers):
        x = _capture(sim, sim_layers[name], images, "input")  # from the layers already rounded/corrected
        y = _capture(ref, ref_layers[name], images, "output")
        with torch.no_grad():
            before.append(_rel_error(_forward(layer, x, quantize_weight(layer.weight)), y))
            if "adaround" in steps:
                layer.weight.copy_(_adaround(layer, x, y, iters, batch, gen))
            if "bias_correction" in steps:
                out = _forward(layer, x, quantize_weight(layer.weight))
                dims = [d for d in range(out.dim()) if d != 1]
                shift = (y - out).mean(dim=dims)
                if layer.bias is None:
                    layer.bias = nn.Parameter(torch.zeros_like(shift), requires_grad=False)
                layer.bias.add_(shift)
            after.append(_rel_error(_forward(layer, x, quantize_weight(layer.weight)), y))
            sim_layers[name].weight.copy_(quantize_weight(layer.weight))
            if layer.bias is not None:
                sim_layers[name].bias = nn.Parameter(layer.bias.clone(), requires_grad=False)
        if on_layer is not None:
            on_layer(k + 1, len(layers))
    return m, PTQReport(steps, len(images), pairs, len(layers),
                        sum(before) / len(before), sum(after) / len(after))


def quantize_weight(w: torch.Tensor) -> torch.Tensor:
    """``w`` after the converter's int8 weight quantisation (per output channel, symmetric,
    round to nearest), back in float."""
    s = _scale(w)
    return torch.clamp(torch.round(w / s), -QMAX, QMAX) * s


def _scale(w: torch.Tensor) -> torch.Tensor:
    amax = w.detach().abs().reshape(len(w), -1).amax(dim=1)
    s = torch.clamp(amax / QMAX, min=torch.finfo(torch.float32).eps)
    return s.reshape(-1, *([1] * (w.dim() - 1)))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval copy of ``model`` with every BatchNorm that follows a conv (its only user)
    folded into that conv, the BatchNorm replaced by ``nn.Identity``."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    m = copy.deepcopy(model).eval()
    gm = _trace(m)
    mods = dict(m.named_modules())
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.Conv2d):
            continue
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(mods.get(users[0].target), nn.BatchNorm2d):
            conv, bn = mods[node.target], mods[users[0].target]
            m.set_submodule(node.target, fuse_conv_bn_eval(conv, bn))
            m.set_submodule(users[0].target, nn.Identity())
    for p in m.parameters():  # fuse_conv_bn_eval's new parameters included
        p.requires_grad_(False)
    return m


def equalize(model: nn.Module, *, rounds: int = 20, tol: float = 1e-3) -> int:
    """Cross-layer equalization of ``model`` in place (see the module docstring); returns the
    number of pairs equalized."""
    pairs = _pairs(model)
    mods = dict(model.named_modules())
    with torch.no_grad():
        for _ in range(rounds):
            moved = 0.0
            for a_name, b_name in pairs:
                a, b = mods[a_name], mods[b_name]
                ra = a.weight.abs().reshape(a.out_channels, -1).amax(dim=1)
                wb = b.weight.transpose(0, 1)  # input channel first
                rb = wb.abs().reshape(wb.shape[0], -1).amax(dim=1)
                s = torch.where((ra > 0) & (rb > 0), torch.sqrt(ra / rb.clamp_min(1e-12)), torch.ones_like(ra))
                a.weight.div_(s.reshape(-1, *([1] * (a.weight.dim() - 1))))
                if a.bias is not None:
                    a.bias.div_(s)
                b.weight.mul_(s.reshape(1, -1, *([1] * (b.weight.dim() - 2))))
                moved = max(moved, float((s - 1).abs().max()))
            if moved < tol:
                break
    return len(pairs)


_PASS_MODULES = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity, nn.Flatten, nn.Dropout)
_PASS_FUNCTIONS = (torch.relu, F.relu, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d)


def _pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(A, B): a conv A whose output reaches only the conv/linear B (groups 1, its input
    channels = A's output channels), through ops that commute with a positive per-channel
    scale."""
    gm = _trace(model)
    mods = dict(model.named_modules())
    out = []
    for node in gm.graph.nodes:
        a = mods.get(node.target) if node.op == "call_module" else None
        if not isinstance(a, nn.Conv2d):
            continue
        cur = node
        while len(cur.users) == 1:
            u = next(iter(cur.users))
            mod = mods.get(u.target) if u.op == "call_module" else None
            if isinstance(mod, nn.Conv2d) and mod.groups == 1 and mod.in_channels == a.out_channels:
                out.append((node.target, u.target))
                break
            if isinstance(mod, nn.Linear) and mod.in_features == a.out_channels:
                out.append((node.target, u.target))
                break
            passes = (isinstance(mod, _PASS_MODULES) and not isinstance(mod, nn.Flatten | nn.Dropout)
                      or isinstance(mod, nn.Dropout) and not mod.training
                      or isinstance(mod, nn.Flatten) and mod.start_dim == 1
                      or u.op == "call_function" and u.target in _PASS_FUNCTIONS
                      or u.op == "call_function" and u.target is torch.flatten and _flat_from_1(u)
                      or u.op == "call_method" and u.target == "relu")
            if not passes or u.args[0] is not cur:
                break
            cur = u
    return out


def _flat_from_1(node) -> bool:
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    return start == 1


def _trace(model: nn.Module):
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as e:  # fx raises many types for untraceable code
        raise ExportError(f"int8 PTQ steps need a torch.fx-traceable model; {type(model).__name__} is not "
                          f"({str(e).splitlines()[0][:160]}); export with no PTQ steps (int8_ptq=[], "
                          "CLI: --int8-ptq none)") from e


class _Stop(Exception):
    pass


def _capture(model: nn.Module, layer: nn.Module, images: torch.Tensor, what: str,
             chunk: int = 64) -> torch.Tensor:
    """``layer``'s input or output over ``images`` (the forward stops at the layer)."""
    got = []

    def hook(mod, inp, out=None):
        got.append((inp[0] if what == "input" else out).detach())
        raise _Stop

    h = (layer.register_forward_pre_hook(hook) if what == "input" else layer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for i in range(0, len(images), chunk):
                try:
                    model(images[i:i + chunk])
                except _Stop:
                    pass
    finally:
        h.remove()
    if len(got) != math.ceil(len(images) / chunk):
        raise ExportError(f"int8 PTQ: layer {type(layer).__name__} did not run exactly once per forward; "
                          "export with no PTQ steps (int8_ptq=[])")
    return torch.cat(got)


def _forward(layer: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(x, w, layer.bias)
    return layer._conv_forward(x, w, layer.bias)


def _rel_error(out: torch.Tensor, y: torch.Tensor) -> float:
    return float((out - y).pow(2).mean() / y.pow(2).mean().clamp_min(1e-12))


def _adaround(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int, batch: int,
              gen: torch.Generator) -> torch.Tensor:
    """The layer's weights on the int8 grid, each rounded up or down to reproduce ``y`` from
    ``x`` (AdaRound: rectified-sigmoid soft rounding, a regulariser annealed from beta 20 to 2
    after 20% of the steps pushing every weight to a hard choice)."""
    w = layer.weight.detach()
    s = _scale(w)
    base = torch.floor(w / s)
    rest = (w / s - base).clamp(0.01, 0.99)  # start from round-to-nearest's soft value
    v = (-torch.log((_ZETA - _GAMMA) / (rest - _GAMMA) - 1)).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=1e-2)
    warm = int(0.2 * iters)
    lam = 0.01

    def soft(v):
        return torch.clamp(torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA, 0, 1)

    with torch.enable_grad():
        for it in range(iters):
            idx = torch.randint(len(x), (min(batch, len(x)),), generator=gen)
            h = soft(v)
            wq = torch.clamp(base + h, -QMAX, QMAX) * s
            rec = (_forward(layer, x[idx], wq) - y[idx]).pow(2).sum(1).mean()
            loss = rec
            if it >= warm:
                beta = 20 + (2 - 20) * (it - warm) / max(1, iters - warm)
                loss = rec + lam * (1 - (2 * h - 1).abs().pow(beta)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        q = torch.clamp(base + (soft(v) >= 0.5).float(), -QMAX, QMAX)
        # a channel's largest |weight| keeps its nearest level (+-127): the converter takes the
        # scale from it, so the grid the weights were rounded on stays the converter's grid
        nearest = torch.clamp(torch.round(w / s), -QMAX, QMAX)
        q = torch.where(nearest.abs() == QMAX, nearest, q)
        return q * s
