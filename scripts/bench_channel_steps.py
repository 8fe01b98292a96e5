"""Latency of one conv layer as its output width grows, on each host runtime: the evidence
for a target's `round_to` (latency moves in steps of the kernels' channel tile).

Prints a table and writes bench/results/channel_steps.json. Each point is the minimum of 3
medians (100 timed runs after 20 warm-up runs each), 1 thread.

    .venv/bin/python scripts/bench_channel_steps.py
"""

from __future__ import annotations

import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

import edgeprune
from edgeprune import convert, runtimes
from edgeprune._io import write_json
from edgeprune.profiling.latency import host_identity

ROOT = Path(__file__).resolve().parents[1]
C_IN, HW = 32, 16
WIDTHS = list(range(8, 72, 8))


def main() -> int:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    x = np.random.default_rng(0).standard_normal((1, C_IN, HW, HW)).astype(np.float32)
    results: dict[str, dict[int, float]] = {"litert": {}, "onnxruntime": {}}
    with tempfile.TemporaryDirectory() as d:
        for co in WIDTHS:
            m = nn.Sequential(nn.Conv2d(C_IN, co, 3, 1, 1, bias=False), nn.BatchNorm2d(co), nn.ReLU()).eval()
            ex = torch.zeros(1, C_IN, HW, HW)
            paths = {"litert": convert.to_tflite(m, Path(d) / f"c{co}.tflite", ex),
                     "onnxruntime": convert.to_onnx(m, Path(d) / f"c{co}.onnx", ex,
                                                   exporter="torchscript", dynamic_batch=False)}
            for rt, p in paths.items():
                s = runtimes.open_session(p, threads=1)
                results[rt][co] = min(runtimes.time_session(s, x, warmup=20, runs=100).median_ms
                                      for _ in range(3))
    print(f"3x3 conv, {C_IN} -> c_out channels, {HW}x{HW} input, 1 thread (microseconds)")
    print(f"{'c_out':>6} " + " ".join(f"{co:>6}" for co in WIDTHS))
    for rt, r in results.items():
        print(f"{rt[:6]:>6} " + " ".join(f"{1000 * r[co]:6.1f}" for co in WIDTHS))
    out = ROOT / "bench" / "results" / "channel_steps.json"
    write_json(out, {
        "benchmark": "channel_steps",
        "command": "python scripts/bench_channel_steps.py",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": host_identity(),
        "edgeprune": edgeprune.__version__,
        "layer": f"conv3x3 s1 p1, c_in {C_IN}, input {HW}x{HW}, + BN + ReLU",
        "method": "min of 3 medians of 100 runs after 20 warm-up, batch 1, 1 thread",
        "latency_ms": {rt: {str(k): round(v, 5) for k, v in r.items()} for rt, r in results.items()},
    })
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
