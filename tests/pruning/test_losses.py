import math

import pytest
import torch

from edgeprune.pruning.losses import attention_loss, attention_map, kd_loss, mutual_loss


def test_kd_golden_two_classes():
    # teacher p = softmax([0, 0]) = (0.5, 0.5); student q = softmax([ln 3, 0]) = (0.75, 0.25)
    # KL(p || q) = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25); tau = 1
    s = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)
    t = torch.tensor([[0.0, 0.0]], requires_grad=True)
    loss = kd_loss(s, t, tau=1.0)
    assert float(loss.detach()) == pytest.approx(0.5 * math.log(2 / 3) + 0.5 * math.log(2.0), rel=1e-6)
    loss.backward()
    assert s.grad is not None and t.grad is None  # the teacher gets no gradient


def test_kd_scales_with_tau_squared_and_is_zero_at_agreement():
    z = torch.randn(4, 10)
    assert float(kd_loss(z, z, tau=4.0)) == pytest.approx(0.0, abs=1e-6)
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    # same tempered distributions: logits scaled with tau give the same KL, times tau^2
    assert float(kd_loss(2 * s, 2 * t, tau=2.0)) == pytest.approx(4 * float(kd_loss(s, t, tau=1.0)), rel=1e-5)


def test_attention_map_is_width_independent():
    f = torch.randn(2, 8, 4, 4)
    doubled = torch.cat([f, f], dim=1)  # twice the channels, same per-channel energy
    assert torch.allclose(attention_map(f), attention_map(doubled), atol=1e-6)
    assert torch.allclose(attention_map(f).norm(dim=1), torch.ones(2))


def test_attention_loss_golden():
    # one sample, 2x1 map: A(F) = normalize([1, 0]) vs normalize([0, 1]) -> squared
    # distance 2 over 2 positions -> mean 1
    s = torch.tensor([[[[1.0], [0.0]]]])
    t = torch.tensor([[[[0.0], [2.0]]]])
    assert float(attention_loss([s], [t])) == pytest.approx(1.0)
    assert float(attention_loss([s, s], [t, s])) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        attention_loss([s], [])


def test_mutual_loss_averages_peers_without_their_gradients():
    s = torch.randn(3, 5, requires_grad=True)
    p1, p2 = torch.randn(3, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    loss = mutual_loss(s, [p1, p2], tau=4.0)
    assert float(loss) == pytest.approx((float(kd_loss(s, p1, 4.0)) + float(kd_loss(s, p2, 4.0))) / 2, rel=1e-6)
    loss.backward()
    assert p1.grad is None and p2.grad is None
    assert float(mutual_loss(s, [], tau=4.0)) == 0.0
