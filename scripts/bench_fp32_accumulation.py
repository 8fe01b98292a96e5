"""Where the fp32 logit differences come from: each runtime's error against a float64
PyTorch reference, for the committed VGG-Small baseline (the model with the largest logits)
and for its single layers, beside a plain sequential fp32 sum in numpy (one accumulator per
output, summed in order, as a GEMM micro-kernel with a long inner loop does).

Runtimes: PyTorch fp32 (this host's CPU kernels), LiteRT with its default XNNPACK delegate
(what edgeprune validates and measures), LiteRT's built-in kernels without the delegate
(shown only to locate the error; edgeprune never runs them), ONNX Runtime (CPU).

Errors are max |y - y_fp64| over the images, also divided by max |y_fp64| (the scale).
When the emulated aarch64 runtime is built (make arm64-runtime), each single layer's .tflite
also runs on aarch64 LiteRT, and the row records how many outputs equal the x86 ones.
Prints a table and writes bench/results/fp32_accumulation.json.

    .venv/bin/python scripts/bench_fp32_accumulation.py [--images 500]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from _bench import baseline_checkpoints, load_with_data  # scripts/_bench.py, beside this file
from torch import nn

from edgeprune import data
from edgeprune._io import write_json
from edgeprune.convert.onnx import to_onnx
from edgeprune.convert.tflite import to_tflite
from edgeprune.profiling.latency import host_identity
from edgeprune.runtimes import arm64, open_session

ROOT = Path(__file__).resolve().parents[1]


def _litert_builtin(path: Path, x: np.ndarray) -> np.ndarray:
    """LiteRT's reference/optimised built-in kernels, XNNPACK delegate off (diagnosis only)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(path), num_threads=1,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    out = []
    for xi in x:
        it.set_tensor(i, np.ascontiguousarray(xi.transpose(1, 2, 0)[None]))
        it.invoke()
        y = it.get_tensor(o)[0]
        out.append(y.transpose(2, 0, 1) if y.ndim == 3 else y)
    return np.stack(out)


def _sequential_conv(conv: nn.Conv2d, x: np.ndarray, channels: int) -> np.ndarray:
    """A 3x3/pad-1 conv as im2col x weights, each output summed in order over (ky, kx, c) in one
    float32 accumulator with fused multiply-add (product and sum exact in float64, then rounded
    to float32 once per step). First ``channels`` outputs."""
    w = conv.weight.detach().numpy()[:channels].transpose(0, 2, 3, 1).reshape(channels, -1)
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([np.stack([xp[b, :, i:i + 3, j:j + 3].transpose(1, 2, 0).reshape(-1)
                               for i in range(h) for j in range(wd)]) for b in range(n)])  # (n, h*w, 9c)
    cols, w = cols.astype(np.float64), w.astype(np.float64)
    acc = np.zeros((n, h * wd, channels), np.float32)
    for k in range(w.shape[1]):
        acc = (acc + cols[:, :, k, None] * w[None, None, :, k]).astype(np.float32)
    return acc.transpose(0, 2, 1).reshape(n, channels, h, wd)


def _errors(outs: dict[str, np.ndarray], ref64: np.ndarray) -> dict[str, dict[str, float]]:
    scale = float(np.abs(ref64).max())
    return {k: {"max_abs": float(np.abs(v - ref64).max()),
                "relative": float(np.abs(v - ref64).max()) / scale} for k, v in outs.items()}


def _case(name: str, model: nn.Module, x: np.ndarray, d: Path, seq: np.ndarray | None = None,
          on_arm64: bool = False) -> dict:
    model = model.eval()
    example = torch.from_numpy(x[:1])
    tfl, onx = to_tflite(model, d / f"{name}.tflite", example), to_onnx(model, d / f"{name}.onnx", example)
    with torch.no_grad():
        ref64 = copy.deepcopy(model).double()(torch.from_numpy(x).double()).numpy()
        outs = {"pytorch_fp32": model(torch.from_numpy(x)).numpy()}
    litert = open_session(tfl, runtime="litert")
    outs["litert_xnnpack"] = np.concatenate([litert.run(xi[None]) for xi in x])
    outs["litert_builtin"] = _litert_builtin(tfl, x)
    outs["onnxruntime"] = open_session(onx, runtime="onnxruntime").run(x)
    row = {"case": name, "images": len(x), "scale": float(np.abs(ref64).max()), "errors": _errors(outs, ref64)}
    if on_arm64:  # the same file on aarch64 LiteRT (NHWC in and out there)
        y = arm64.run_artifact(tfl, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
        y = y.transpose(0, 3, 1, 2) if y.ndim == 4 else y
        row["arm64_litert"] = {"equal_to_x86": float(np.mean(y == outs["litert_xnnpack"])),
                               "max_abs_vs_x86": float(np.abs(y - outs["litert_xnnpack"]).max())}
    if seq is not None:  # compared on the outputs the sequential sum covers
        k = seq.shape[1]
        row["sequential_fp32_outputs"] = k
        row["errors_on_those_outputs"] = _errors({**{n: o[:, :k] for n, o in outs.items()},
                                                  "sequential_fp32": seq}, ref64[:, :k])
        row["sequential_equals_xnnpack"] = float(np.mean(seq == outs["litert_xnnpack"][:, :k]))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500, help="test images through the whole model")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fp32_accumulation.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    ck = next(c for c in baseline_checkpoints() if c.parent.name.startswith("vgg_small"))
    model, spec, _, test = load_with_data(ck, 1, a.images)
    x = torch.cat([b for b, _ in data.batches(test, 250, mean=spec.input.mean, std=spec.input.std)]).numpy()
    rows, emu = [], arm64.available()
    with tempfile.TemporaryDirectory(prefix="edgeprune-fp32-") as tmp:
        d = Path(tmp)
        rows.append(_case(f"{ck.parent.name} (whole model)", model, x, d))
        # its layers on the activations that reach them (first 8 images)
        feats, seen = model.features, x[:8]
        with torch.no_grad():
            acts = [torch.from_numpy(seen)]
            for m in feats:
                acts.append(m(acts[-1].clone()))
        convs = [(i, m) for i, m in enumerate(feats) if isinstance(m, nn.Conv2d)]
        for i, conv in convs:
            k = conv.in_channels * 9
            inp = acts[i].numpy()
            seq = _sequential_conv(conv, inp, 16)
            rows.append(_case(f"conv{i} {conv.in_channels}->{conv.out_channels} 3x3 "
                              f"@{inp.shape[2]}x{inp.shape[3]} (K={k})", conv, inp, d, seq, emu))
        rows.append(_case("classifier 8192->10 (K=8192)", nn.Sequential(nn.Flatten(), model.classifier),
                          acts[-1].numpy(), d, on_arm64=emu))
    runtimes = ("pytorch_fp32", "litert_xnnpack", "litert_builtin", "onnxruntime")
    print(f"{'case':44} {'scale':>7} " + " ".join(f"{r:>15}" for r in runtimes) + f" {'arm64=x86':>10}"
          f" {'sequential':>12}")
    for r in rows:
        seq = r.get("errors_on_those_outputs")
        print(f"{r['case']:44} {r['scale']:7.2f} "
              + " ".join(f"{r['errors'][k]['relative']:15.2e}" for k in runtimes)
              + (f" {100 * r['arm64_litert']['equal_to_x86']:9.1f}%" if "arm64_litert" in r else f" {'-':>10}")
              + (f" {seq['sequential_fp32']['relative']:12.2e} (xnnpack {seq['litert_xnnpack']['relative']:.2e}, "
                 f"{100 * r['sequential_equals_xnnpack']:.0f}% of outputs equal)"
                 if seq else ""))
    write_json(a.out, {
        "what": "fp32 error of each runtime against a float64 PyTorch reference (relative = max abs / "
                "max |reference|); sequential_fp32 sums each output in order in one float32 accumulator",
        "command": "scripts/bench_fp32_accumulation.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": host_identity(),
        "arm64_versions": arm64.versions() if emu else None, "rows": rows,
    })
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
