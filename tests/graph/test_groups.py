"""Channel groups from one dependency-graph walk, and what a group's width does to each layer."""

import torch

from edgeprune import models
from edgeprune.graph import group_structure, layer_widths


def test_structure_maps_group_widths_to_layers():
    m = models.create("vgg_small")
    groups = group_structure(m, torch.zeros(1, 3, 32, 32))
    last = next(g for g in groups if g.name == "features.17")
    assert dict(last.ins) == {"classifier": 16}  # 512 x 4 x 4 flattened
    assert [b for b, _, _ in last.bns] == ["features.18"] and last.bns[0][2] == tuple(range(512))
    w = layer_widths(m, groups, {"features.17": 256})
    assert w["features.17"] == (512, 256) and w["classifier"] == (256 * 16, 10)


def test_structure_depthwise_and_residual():
    m = models.create("mobilenetv2")
    groups = group_structure(m, torch.zeros(1, 3, 32, 32))
    hidden = next(g for g in groups if "blocks.16.conv.3" in dict(g.outs))
    w = layer_widths(m, groups, {hidden.name: 480})
    assert w["blocks.16.conv.3"] == (480, 480)  # depthwise in = out
    assert w["blocks.16.conv.0"][1] == 480 and w["blocks.16.conv.6"][0] == 480
    r = models.create("resnet20")
    stream = next(g for g in group_structure(r, torch.zeros(1, 3, 32, 32)) if g.name == "conv1")
    w = layer_widths(r, [stream], {"conv1": 8})
    assert w["conv1"] == (3, 8) and w["layer1.2.conv2"] == (16, 8) and w["layer2.0.conv1"] == (8, 32)
