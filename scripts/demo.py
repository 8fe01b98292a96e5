"""The main job on bundled data: committed ResNet-20 baseline -> evaluate -> export ONNX and
TFLite -> run both on the host runtimes -> accuracy, parity and latency.

    make demo            # or: .venv/bin/python scripts/demo.py [--out out/demo]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import edgeprune
from edgeprune import data, export, runtimes
from edgeprune.runtimes import time_session
from edgeprune.train import evaluate, predict

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "bench" / "baselines" / "resnet20-shapes" / "model.safetensors"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(BASELINE))
    ap.add_argument("--data", default="shapes:test")
    ap.add_argument("--parity-images", type=int, default=200)
    ap.add_argument("--runs", type=int, default=100, help="timed runs per runtime (median reported)")
    ap.add_argument("--out", default=str(ROOT / "out" / "demo"))
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    t_start = time.perf_counter()
    out = Path(a.out)

    model = edgeprune.load(a.checkpoint)
    spec = model.edgeprune_spec
    print(f"model     {a.checkpoint} ({spec.architecture}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters)")
    test = data.open(a.data, labels=True, size=spec.input.hw)
    acc = evaluate(model, test, input_spec=spec.input)
    print(f"pytorch   {a.data}: {acc}")

    example = torch.zeros(1, *spec.input.shape)
    t0 = time.perf_counter()
    onnx_path = export.to_onnx(model, out / "model.onnx", example)
    t1 = time.perf_counter()
    tfl_path = export.to_tflite(model, out / "model.tflite", example)
    t2 = time.perf_counter()
    print(f"export    {onnx_path} ({t1 - t0:.1f} s), {tfl_path} ({t2 - t1:.1f} s)")

    sub = data.open(a.data, labels=True, size=spec.input.hw, limit=a.parity_images)
    ref, labels = predict(model, sub, input_spec=spec.input)
    x = np.concatenate([b[0].numpy() for b in data.batches(sub, 256, mean=spec.input.mean,
                                                              std=spec.input.std)])
    rows = []
    for path in (onnx_path, tfl_path):
        sess = runtimes.open_session(path, threads=1)
        got = sess.run_batched(x) if sess.input_shape[0] > 0 else sess.run(x)
        lat = time_session(sess, x[:1], warmup=20, runs=a.runs)
        rows.append((path.suffix[1:], sess.runtime, sess.runtime_version,
                     float(np.abs(got - ref).max()),
                     float((got.argmax(1) == ref.argmax(1)).mean()),
                     float((got.argmax(1) == labels).mean()), lat, path.stat().st_size))

    print()
    print(f"{'format':8} {'runtime':12} {'version':8} {'max|dlogit|':>11} {'top1 agree':>10} "
          f"{'acc':>7} {'median ms':>9} {'p10-p90 ms':>13} {'size KiB':>8}")
    for fmt, rt, ver, diff, agree, accu, lat, size in rows:
        print(f"{fmt:8} {rt:12} {ver:8} {diff:11.2e} {100 * agree:9.1f}% {100 * accu:6.2f}% "
              f"{lat.median_ms:9.3f} {lat.p10_ms:6.3f}-{lat.p90_ms:6.3f} {size / 1024:8.0f}")
    print(f"\nparity on {len(x)} {a.data} images; latency: batch 1, 1 thread, median of {a.runs} runs "
          f"after 20 warm-up runs on this host")
    print(f"demo took {time.perf_counter() - t_start:.0f} s")
    worst = max(r[3] for r in rows)
    if worst > 1e-4 or min(r[4] for r in rows) < 1.0:
        print(f"PARITY FAILED: max abs logit diff {worst:.3g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
