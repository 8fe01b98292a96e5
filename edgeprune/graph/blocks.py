"""Removable residual blocks: modules that compute ``act(x + branch(x))`` and become an exact
identity when the BatchNorm at the end of their branch is zero.

A block is found by experiment, not by class name: for every module whose output has its
input's shape and which contains a BatchNorm, the last BatchNorm it runs (the one producing
the branch's output) is set to gamma = beta = 0 on a copy, and the module is run again on the
input it saw in a forward pass of the example. If the output then *equals* that input (bit
for bit), the module is a block: a ResNet basic block (ReLU after the add; its input comes
from a ReLU, so ``relu(x + 0) = x``) or a MobileNetV2 inverted residual (no activation after
the add). A block with a projection shortcut changes the shape and is never one.

Removing a block replaces the module by a :class:`RemovedBlock` (an ``nn.Identity``;
:func:`remove_blocks`); the pruner checks on held-out data that this did not change the
logits.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from edgeprune.errors import ConfigError
from edgeprune.models.removed import RemovedBlock


@dataclass(frozen=True)
class BlockStructure:
    name: str  # the block's module path
    gate: str  # module path of the BatchNorm whose output the block adds to its input
    channels: int  # of that BatchNorm
    layers: tuple[str, ...]  # conv/linear paths inside the block, removed with it
    width: int = 1  # a block is one unit: kept (1) or removed (0)


def residual_blocks(model: nn.Module, example_input: torch.Tensor) -> list[BlockStructure]:
    """The removable residual blocks of ``model`` (not modified), innermost first found, in
    execution order. ``example_input`` gives the input's shape, dtype and device; the
    experiment runs on seeded random values of that shape, because a degenerate input (all
    zeros: a module whose output is then zero anyway) would pass any module as an identity."""
    probe = torch.randn(example_input.shape, generator=torch.Generator().manual_seed(0)).to(
        device=example_input.device, dtype=example_input.dtype)
    model = copy.deepcopy(model).eval()
    modules = dict(model.named_modules())
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    order: list[str] = []  # modules in the order they finish

    def hook(name: str):
        def f(mod, inp, out):
            order.append(name)
            if (name not in seen and len(inp) == 1 and isinstance(inp[0], torch.Tensor)
                    and isinstance(out, torch.Tensor) and out.shape == inp[0].shape):
                seen[name] = (inp[0].detach().clone(), out.detach().clone())
        return f

    hooks = [m.register_forward_hook(hook(n)) for n, m in modules.items() if n]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in hooks:
            h.remove()
    finished = {n: i for i, n in reversed(list(enumerate(order)))}  # first finish of each
    blocks: dict[str, BlockStructure] = {}  # by gate: the innermost module wins
    for name, (x, _) in seen.items():
        inside = [n for n in modules if n.startswith(name + ".")]
        bns = [n for n in inside if isinstance(modules[n], nn.BatchNorm2d) and n in finished]
        if not bns:
            continue
        gate = max(bns, key=lambda n: finished[n])
        trial = copy.deepcopy(modules[name]).eval()
        bn = dict(trial.named_modules())[gate[len(name) + 1:]]
        with torch.no_grad():
            bn.weight.zero_()
            bn.bias.zero_()
            y = trial(x.clone())
        if not torch.equal(y, x):
            continue
        layers = tuple(n for n in inside if isinstance(modules[n], (nn.Conv2d, nn.Linear)))
        prev = blocks.get(gate)
        if prev is None or name.count(".") > prev.name.count("."):
            blocks[gate] = BlockStructure(name, gate, modules[gate].num_features, layers)
    return sorted(blocks.values(), key=lambda b: finished[b.name])


def remove_blocks(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """A copy of ``model`` with the modules ``names`` replaced by :class:`RemovedBlock`, an
    identity (lossless for blocks whose gate is zero)."""
    model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules or not name:
            raise ConfigError(f"no module {name!r} to remove; blocks are named by module path")
        model.set_submodule(name, RemovedBlock())
    return model


def removed_under(model: nn.Module, path: str) -> bool:
    """True when ``path`` (a layer of the full architecture) lies inside a block of ``model``
    that pruning removed (a :class:`RemovedBlock`)."""
    parts = path.split(".")
    for i in range(1, len(parts)):
        try:
            module = model.get_submodule(".".join(parts[:i]))
        except AttributeError:  # not in this model at all
            return False
        if isinstance(module, RemovedBlock):
            return True
    return False
