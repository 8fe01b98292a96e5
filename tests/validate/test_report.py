"""The pass/fail rules of a validation row, on synthetic logits."""

from types import SimpleNamespace

import numpy as np

from edgeprune.validate.report import _compare


def _row(fmt, got, ref, x86=None, io=None):
    art = SimpleNamespace(file="m", format=fmt, io=io or {})
    return _compare(art, got, ref, None, None, "rt", "1", "host", x86)


def test_fp32_bound_scales_with_the_logits():
    rng = np.random.default_rng(0)
    small = rng.normal(size=(8, 10)).astype(np.float32)  # |logit| < 5
    big = 50 * small  # the same model with 50x larger logits
    scale_small = max(1.0, float(np.abs(small).max()))
    ok = _row("tflite", small + 0.5e-4 * scale_small, small)
    bad = _row("tflite", small + 2e-4 * scale_small, small)
    assert ok.status == "pass" and ok.logit_scale == scale_small
    assert bad.status == "fail" and "x logit scale" in bad.reasons[0]
    # the same relative rounding on 50x larger logits still passes; an absolute 1e-4 would not
    big_ok = _row("onnx", big + 50 * 0.5e-4 * scale_small, big)
    assert big_ok.status == "pass" and big_ok.max_abs > 1e-4
    # logits under 1 are held to the absolute bound
    tiny = small / 100
    assert _row("tflite", tiny + 2e-4, tiny).status == "fail"


def test_cross_arch_bound_scales_and_int8_must_be_exact():
    ref = np.linspace(-20, 20, 40, dtype=np.float32).reshape(4, 10)
    assert _row("tflite", ref, ref, x86=ref + 1.5e-4).status == "pass"  # 1.5e-4 <= 1e-5 x 20
    r = _row("tflite", ref, ref, x86=ref + 3e-4)
    assert r.status == "fail" and "differs from the x86 runtime" in r.reasons[0]
    q = {"output": {"quantization": {"scale": 0.2, "zero_point": 0}}}
    assert _row("tflite-int8", ref, ref, x86=ref + 1e-6, io=q).status == "fail"
    assert _row("tflite-int8", ref, ref, x86=ref.copy(), io=q).status == "pass"


def test_a_drop_of_exactly_the_bar_passes_despite_float_rounding():
    ref = np.eye(10, dtype=np.float32)[np.arange(100) % 10] * 5  # 100 images, argmax = i % 10
    labels = np.arange(100) % 10
    labels[:3] = (labels[:3] + 1) % 10  # reference top-1 0.97
    got = ref.copy()
    got[3] = np.roll(got[3], 1)  # one more miss, and one flip: 99% agreement, top-1 0.96
    q = {"output": {"quantization": {"scale": 0.1, "zero_point": 0}}}
    art = SimpleNamespace(file="m", format="tflite-int8", io=q)
    row = _compare(art, got, ref, labels, 0.97, "rt", "1", "host", None)
    assert 100 * (0.97 - 0.96) > 1.0  # the rounding this guards against
    assert row.top1_agreement == 0.99 and row.top1 == 0.96 and row.status == "pass", row.reasons
    got[4] = np.roll(got[4], 1)  # a second flip: 98% agreement, 2 points lost
    assert _compare(art, got, ref, labels, 0.97, "rt", "1", "host", None).status == "fail"
