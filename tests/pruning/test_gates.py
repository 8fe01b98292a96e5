"""Zeroed gates make removal lossless, on every zoo model."""

import numpy as np
import pytest
import torch

from edgeprune import models
from edgeprune.graph.groups import group_structure
from edgeprune.graph.surgery import remove_channels
from edgeprune.pruning.gates import (
    gate_matrix,
    gate_norms,
    set_gates,
    taylor_scores,
    zero_channel_indices,
    zero_gates,
)
from tests.nets import CatSE, randomize_bn


@pytest.mark.parametrize("name", models.names())
def test_random_zero_gates_are_removed_losslessly(name):
    torch.manual_seed(0)
    model = randomize_bn(models.create(name))
    x = torch.randn(4, 3, 32, 32)
    groups = group_structure(model, x[:1])
    rng = np.random.default_rng(0)
    for g in groups:
        k = int(rng.integers(1, g.width // 2 + 1))
        zero_gates(model, g, rng.choice(g.width, size=k, replace=False).tolist())
    remove = zero_channel_indices(model, groups)
    assert sum(map(len, remove.values())) > 0
    with torch.no_grad():
        masked = model.eval()(x)
        pruned = remove_channels(model, x[:1], remove).eval()
        out = pruned(x)
    diff = float((masked - out).abs().max())
    assert diff <= 1e-4, f"{name}: removal changed logits by {diff:.3g}"
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_gate_round_trip_and_norms():
    model = randomize_bn(models.create("resnet20"))
    g = next(s for s in group_structure(model, torch.zeros(1, 3, 32, 32)) if s.name == "conv1")
    # the first residual stream: the stem's BN and bn2 of each of stage 1's three blocks
    assert [b for b, _, _ in g.bns] == ["bn1", "layer1.0.bn2", "layer1.1.bn2", "layer1.2.bn2"]
    gm = gate_matrix(model, g)
    assert gm.shape == (16, 2 * len(g.bns))
    set_gates(model, g, [3], gm[[3]] * 2)
    assert torch.allclose(gate_matrix(model, g)[3], gm[3] * 2)
    assert gate_norms(model, g)[3] == pytest.approx(float(gm[3].norm() * 2), rel=1e-6)


def test_taylor_scores_golden():
    bn = torch.nn.BatchNorm2d(2)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1, bias=False), bn)
    g = group_structure(model, torch.zeros(1, 1, 2, 2))[0]
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([2.0, 3.0]))
        bn.bias.copy_(torch.tensor([1.0, -1.0]))
    bn.weight.grad = torch.tensor([0.5, 1.0])
    bn.bias.grad = torch.tensor([4.0, 2.0])
    # channel 0: (2*0.5 + 1*4)^2 = 25; channel 1: (3*1 + -1*2)^2 = 1
    assert taylor_scores(model, g).tolist() == pytest.approx([25.0, 1.0])
    # with reference values (the teacher's gate) in place of theta: a zeroed gate still scores
    from edgeprune.pruning.gates import GroupGates

    gg = GroupGates(model, g)
    gg.zero([0])
    ref = [torch.tensor([2.0, 3.0]), torch.tensor([1.0, -1.0])]
    assert gg.taylor().tolist() == pytest.approx([0.0, 1.0])
    assert gg.taylor(ref).tolist() == pytest.approx([25.0, 1.0])
    assert gg.row_sizes().tolist() == [2.0, 2.0]  # gamma and beta of one BatchNorm


def test_concat_and_squeeze_excitation_prune_losslessly():
    torch.manual_seed(0)
    model = randomize_bn(CatSE())
    x = torch.randn(4, 3, 16, 16)
    groups = group_structure(model, x[:1])
    by_root = {g.name: g for g in groups}
    # the concatenation couples both branches with the SE output: one 16-channel group whose
    # gates are branch a's BN (group channels 0..7) and branch b's BN (8..15)
    cat = by_root["se2"]
    assert cat.width == 16 and dict(cat.outs) == {"se2": 1.0, "a.0": 0.5, "b.0": 0.5}
    assert {p: root for p, _, root in cat.bns} == {"a.1": tuple(range(8)), "b.1": tuple(range(8, 16))}
    zero_gates(model, cat, [1, 5, 8, 15])
    zero_gates(model, by_root["c.0"], [2])
    remove = zero_channel_indices(model, groups)
    assert remove["se2"] == [1, 5, 8, 15] and remove["c.0"] == [2]
    assert model.b[1].weight[0] == 0 and model.b[1].weight[1] != 0  # group channel 8 = b's 0
    with torch.no_grad():
        masked = model.eval()(x)
    pruned = remove_channels(model, x[:1], remove).eval()
    with torch.no_grad():
        out = pruned(x)
    assert float((masked - out).abs().max()) <= 1e-4
    assert pruned.se2.out_channels == 12 and pruned.c[0].in_channels == 12
