"""The pass/fail rules of a validation row, on synthetic logits."""

from types import SimpleNamespace

import numpy as np

from edgeprune.bundle.artifacts import ArtifactIO, Quantization, TensorIO
from edgeprune.validation.report import _compare


def _int8_io(scale):
    return ArtifactIO(TensorIO(dtype="int8"), TensorIO(dtype="int8", quantization=Quantization(scale, 0)))


def _row(fmt, got, ref, x86=None, io=None):
    art = SimpleNamespace(file="m", format=fmt, io=io or ArtifactIO(TensorIO(), TensorIO()))
    return _compare(art, got, ref, None, None, "rt", "1", "host", x86)


def test_fp32_bound_is_the_absolute_1e_4_and_a_miss_names_its_relative_size():
    rng = np.random.default_rng(0)
    small = rng.normal(size=(8, 10)).astype(np.float32)
    ok = _row("tflite", small + 0.5e-4, small)
    assert ok.status == "pass" and ok.logit_scale == max(1.0, float(np.abs(small).max()))
    # 50x larger logits with the same relative rounding: over the absolute bar, and the reason
    # says how small the difference is next to the logits
    big = 50 * small
    miss = _row("onnx", big + 50 * 0.5e-4, big)
    assert miss.status == "fail" and miss.max_abs > 1e-4
    assert "> 0.0001" in miss.reasons[0] and "of the logit scale" in miss.reasons[0]
    assert _row("tflite", small + 2e-4, small).status == "fail"


def test_cross_arch_bound_is_absolute_and_int8_must_be_exact():
    ref = np.linspace(-20, 20, 40, dtype=np.float32).reshape(4, 10)
    assert _row("tflite", ref, ref, x86=ref + 0.5e-5).status == "pass"
    r = _row("tflite", ref, ref, x86=ref + 1.5e-4)
    assert r.status == "fail" and "differs from the x86 runtime" in r.reasons[0]
    q = _int8_io(0.2)
    assert _row("tflite-int8", ref, ref, x86=ref + 1e-6, io=q).status == "fail"
    assert _row("tflite-int8", ref, ref, x86=ref.copy(), io=q).status == "pass"


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
