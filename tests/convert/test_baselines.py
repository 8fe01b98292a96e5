"""The committed reference baselines: their recorded accuracy reproduces, and their ONNX and
TFLite exports match PyTorch within 1e-4 on real images (trained weights, real logits)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import edgeprune
from edgeprune import convert, data, runtimes
from edgeprune.train import evaluate, predict

ROOT = Path(__file__).resolve().parents[2]
BASELINES = sorted((ROOT / "bench" / "baselines").glob("*/model.safetensors"))


def test_baselines_are_committed():
    names = {p.parent.name for p in BASELINES}
    assert {"resnet20-shapes", "resnet20-digits", "resnet56-shapes", "vgg_small-shapes",
            "mobilenetv2-shapes"} <= names


@pytest.mark.parametrize("ckpt", BASELINES, ids=lambda p: p.parent.name)
def test_recorded_accuracy_reproduces(ckpt):
    metrics = json.loads((ckpt.parent / "metrics.json").read_text())
    model = edgeprune.load(ckpt)
    spec = model.edgeprune_spec
    val = data.open(metrics["val_data"], labels=True, size=spec.input.hw)
    res = evaluate(model, val, input_spec=spec.input)
    assert res.top1 == pytest.approx(metrics["val_top1"], abs=1e-9)
    assert metrics["command"].startswith("edgeprune ") and "--out bench/baselines/" in metrics["command"]


@pytest.mark.parametrize("ckpt", BASELINES, ids=lambda p: p.parent.name)
def test_baseline_export_parity(ckpt, tmp_path):
    model = edgeprune.load(ckpt)
    spec = model.edgeprune_spec
    metrics = json.loads((ckpt.parent / "metrics.json").read_text())
    sub = data.open(metrics["val_data"], labels=True, size=spec.input.hw, limit=16)
    ref, _ = predict(model, sub, input_spec=spec.input)
    x = np.concatenate([b[0].numpy() for b in data.batches(sub, 16, mean=spec.input.mean, std=spec.input.std)])
    example = torch.from_numpy(x[:1])
    for path in (convert.to_onnx(model, tmp_path / "m.onnx", example),
                 convert.to_tflite(model, tmp_path / "m.tflite", example)):
        got = runtimes.open_session(path).run_batched(x)
        diff = float(np.abs(got - ref).max())
        assert diff <= 1e-4, f"{ckpt.parent.name} {path.suffix}: max abs logit diff {diff:.3g}"
        assert (got.argmax(1) == ref.argmax(1)).all(), f"{ckpt.parent.name} {path.suffix}: argmax differs"
