"""The pass/fail rules of a validation row, on synthetic logits."""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edgeprune.bundle.artifacts import ArtifactIO, Quantization, TensorIO
from edgeprune.validation.report import _compare


def _int8_io(scale):
    return ArtifactIO(TensorIO(dtype="int8"), TensorIO(dtype="int8", quantization=Quantization(scale, 0)))


def _row(fmt, got, ref, x86=None, io=None):
    art = SimpleNamespace(file="m", format=fmt, io=io or ArtifactIO(TensorIO(), TensorIO()))
    return _compare(art, got, ref, None, None, "rt", "1", "host", x86)


def test_fp32_bound_grows_with_the_logit_scale_and_stays_1e_4_below_1():
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(8, 10)).astype(np.float32)
    unit /= np.abs(unit).max()  # S = 1: the bar is 1e-4 exactly
    assert _row("tflite", unit + 0.9e-4, unit).status == "pass"
    small = _row("tflite", unit + 1.1e-4, unit)
    assert small.status == "fail" and small.bound == 1e-4 and "> 0.0001" in small.reasons[0]
    # logits to 78 (VGG-Small's scale): XNNPACK's summation order differs from PyTorch by
    # 2.3e-4 there (bench/results/fp32_accumulation.json); the bar is 1e-4 + 1e-5 x 78
    big = unit * 78
    row = _row("onnx", big + 2.3e-4, big)
    assert row.status == "pass" and row.bound == pytest.approx(1e-4 + 78e-5, rel=1e-6)
    assert _row("onnx", big + 1e-3, big).status == "fail"


def _logits_of(model, x):
    with torch.no_grad():
        return model.eval()(x).numpy()


@pytest.mark.parametrize("bug", ["dropped batchnorm", "permuted linear"])
def test_a_real_conversion_bug_still_fails(bug):
    """Trained-like logits from a real model, and the same model with a converter's classic
    bugs: a BatchNorm that was not folded in, a classifier fed NHWC-flattened features."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                              torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 10))
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
        net[4].weight.mul_(20)  # logits of ~10-30, like a trained classifier's
    x = torch.randn(64, 3, 4, 4)
    ref = _logits_of(net, x)
    buggy = copy.deepcopy(net)
    if bug == "dropped batchnorm":
        buggy[1] = torch.nn.Identity()
    else:  # the head's weight columns in (h, w, c) order while the features arrive as (c, h, w)
        w = buggy[4].weight.data.view(10, 8, 4, 4).permute(0, 2, 3, 1).reshape(10, -1)
        buggy[4].weight.data = w.contiguous()
    row = _row("tflite", _logits_of(buggy, x), ref)
    assert row.status == "fail" and row.max_abs > 100 * row.bound, row


def test_a_near_tie_that_flips_is_not_a_disagreement_but_a_clear_flip_is():
    ref = np.zeros((4, 10), dtype=np.float32)
    ref[:, 0] = 5.0
    ref[0, 1] = 5.0 - 2e-5  # image 0: top-2 margin 2e-5, inside the bound
    got = ref.copy()
    got[0, 1] += 4e-5  # flips within rounding
    row = _row("tflite", got, ref)
    assert row.status == "pass" and row.near_ties == 1 and row.top1_agreement == 0.75
    got[1, 2] = 5.0 + 0.05  # a clear flip: a margin of 5, broken by a difference of 5
    row = _row("tflite", got, ref)
    assert row.status == "fail" and "agreement 66.67% < 100% (1 near-ties not counted)" in " ".join(row.reasons)


def test_device_rows_fp32_vs_x86_is_reported_int8_must_be_exact():
    ref = np.linspace(-20, 20, 40, dtype=np.float32).reshape(4, 10)
    r = _row("tflite", ref, ref, x86=ref + 1.5e-4)
    assert r.status == "pass" and r.vs_x86_max_abs == pytest.approx(1.5e-4, rel=0.02)  # float32 steps
    assert _row("tflite", ref + 1e-2, ref, x86=ref).status == "fail"  # still gated against PyTorch
    q = _int8_io(0.2)
    r = _row("tflite-int8", ref, ref, x86=ref + 1e-6, io=q)
    assert r.status == "fail" and "bit-exact" in r.reasons[0]
    assert _row("tflite-int8", ref, ref, x86=ref.copy(), io=q).status == "pass"


def test_int8_quality_is_gated_on_the_host_only():
    ref = np.eye(10, dtype=np.float32)[np.arange(64) % 10] * 5
    got = ref.copy()
    got[0] = np.roll(got[0], 1)  # one flip in 64: 98.4% < 99%
    q = _int8_io(0.1)
    assert _row("tflite-int8", got, ref, io=q).status == "fail"  # the host's sample
    # on a device whose output equals x86's, the same flip is x86's flip: not the device's fault
    assert _row("tflite-int8", got, ref, x86=got.copy(), io=q).status == "pass"


def test_a_drop_of_exactly_the_bar_passes_despite_float_rounding():
    ref = np.eye(10, dtype=np.float32)[np.arange(100) % 10] * 5  # 100 images, argmax = i % 10
    labels = np.arange(100) % 10
    labels[:3] = (labels[:3] + 1) % 10  # reference top-1 0.97
    got = ref.copy()
    got[3] = np.roll(got[3], 1)  # one more miss, and one flip: 99% agreement, top-1 0.96
    q = _int8_io(0.1)
    art = SimpleNamespace(file="m", format="tflite-int8", io=q)
    row = _compare(art, got, ref, labels, 0.97, "rt", "1", "host", None)
    assert 100 * (0.97 - 0.96) > 1.0  # the rounding this guards against
    assert row.top1_agreement == 0.99 and row.top1 == 0.96 and row.status == "pass", row.reasons
    got[4] = np.roll(got[4], 1)  # a second flip: 98% agreement, 2 points lost
    assert _compare(art, got, ref, labels, 0.97, "rt", "1", "host", None).status == "fail"
