"""Removable residual blocks: found by experiment (zeroing the branch's last BatchNorm makes
the module an exact identity), removed as identities, priced as absent layers."""

from __future__ import annotations

import torch
from torch import nn

from edgeprune.graph.blocks import remove_blocks, removed_under, residual_blocks
from edgeprune.graph.groups import group_structure
from edgeprune.graph.layers import layer_units
from edgeprune.graph.widths import WidthMap
from edgeprune.models import create
from edgeprune.models.removed import RemovedBlock
from edgeprune.models.resnet import BasicBlock
from edgeprune.pruning.cost import MacsCost
from tests.nets import TinyNet, randomize_bn

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_resnet_blocks_are_those_with_an_identity_shortcut():
    blocks = residual_blocks(randomize_bn(create("resnet20")), X[:1])
    assert [b.name for b in blocks] == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2",
                                        "layer3.1", "layer3.2"]  # layer2.0/3.0 project: not blocks
    assert all(b.gate == f"{b.name}.bn2" and b.layers == (f"{b.name}.conv1", f"{b.name}.conv2")
               for b in blocks)
    assert [b.channels for b in blocks] == [16, 16, 16, 32, 32, 64, 64]
    assert residual_blocks(create("vgg_small"), X[:1]) == []


def test_a_zero_gated_block_is_removed_without_changing_the_output():
    for arch in ("resnet20", "mobilenetv2"):
        model = randomize_bn(create(arch)).eval()
        blocks = residual_blocks(model, X[:1])
        assert blocks, arch
        modules = dict(model.named_modules())
        for b in blocks[::2]:
            with torch.no_grad():
                modules[b.gate].weight.zero_()
                modules[b.gate].bias.zero_()
        removed = remove_blocks(model, [b.name for b in blocks[::2]])
        assert all(isinstance(dict(removed.named_modules())[b.name], RemovedBlock) for b in blocks[::2])
        with torch.no_grad():
            assert torch.equal(model(X), removed(X)), arch
        assert removed_under(removed, blocks[0].layers[0]) and not removed_under(model, blocks[0].layers[0])


def test_a_zero_example_input_finds_no_false_blocks():
    """All-zero inputs make every module output zero, so zeroing a BatchNorm "keeps" the
    input: the experiment runs on seeded random values of the example's shape instead (a
    profile built with a zero example once found TinyNet's dw and pw as blocks)."""
    model = TinyNet(width=16)
    assert residual_blocks(model, torch.zeros(1, 3, 32, 32)) == []
    assert len(residual_blocks(create("resnet20"), torch.zeros(1, 3, 32, 32))) == 7


def test_a_block_whose_input_can_be_negative_is_not_removable():
    # relu(x + 0) == x only for x >= 0: fed by a conv without an activation, the basic block
    # would not become an identity, so it is not offered
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), randomize_bn(BasicBlock(16, 16, 1)),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    assert residual_blocks(model, X[:1]) == []
    fed_by_relu = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), randomize_bn(BasicBlock(16, 16, 1)),
                                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    assert [b.name for b in residual_blocks(fed_by_relu, X[:1])] == ["2"]


def test_a_removed_blocks_layers_are_priced_as_absent():
    model = randomize_bn(create("resnet20")).eval()
    blocks = residual_blocks(model, X[:1])
    wm = WidthMap(model, group_structure(model, X[:1]), blocks)
    widths = wm({"layer2.1": 0, "layer3.0.shortcut.0": 48})
    assert widths["layer2.1.conv1"] == widths["layer2.1.conv2"] == (0, 0)
    assert widths["layer3.1.conv1"] == (48, 64) and widths["layer3.1.conv2"] == (64, 48)  # stream
    cost = MacsCost(model, (3, 32, 32))
    removed = remove_blocks(model, ["layer2.1"])
    assert "layer2.1.conv1" not in {u.path for u in layer_units(removed, (3, 32, 32))}
    saved = sum(u.macs() for u in layer_units(model, (3, 32, 32)) if u.path.startswith("layer2.1."))
    assert cost(wm({"layer2.1": 0})) == cost.of_model(removed) == (cost() * 1e6 - saved) / 1e6
