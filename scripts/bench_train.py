"""Training and inference throughput (images/s) of every zoo model at batch 128 on this machine.

Prints a table and writes bench/results/train_speed.json. Each number is the median over
timed iterations after one warm-up iteration; all models are measured in one run, so compare
ratios within a run (the machine is noisy).

    .venv/bin/python scripts/bench_train.py [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

import edgeprune
from edgeprune import models
from edgeprune._io import write_json
from edgeprune.profiling.latency import host_identity

ROOT = Path(__file__).resolve().parents[1]


def bench(name: str, batch: int, iters: int) -> dict:
    torch.manual_seed(0)
    model = models.create(name)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step():
        with torch.no_grad():
            model(x)

    out = {}
    for label, step, mode in (("train", train_step, True), ("infer", infer_step, False)):
        model.train(mode)
        step()  # warm-up
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        out[f"{label}_img_s"] = round(batch / statistics.median(times), 1)
        out[f"{label}_iters"] = iters
    out["params"] = sum(p.numel() for p in model.parameters())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 timed iterations per model instead of 10")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_speed.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    iters = 3 if a.quick else 10
    results = {}
    print(f"{'model':12} {'params':>10} {'train img/s':>12} {'infer img/s':>12}")
    for name in models.names():
        r = bench(name, a.batch, iters)
        results[name] = r
        print(f"{name:12} {r['params']:10,} {r['train_img_s']:12.1f} {r['infer_img_s']:12.1f}", flush=True)
    doc = {
        "benchmark": "train_speed",
        "command": "python scripts/bench_train.py" + (" --quick" if a.quick else "")
                   + f" --threads {a.threads} --batch {a.batch}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": host_identity(),
        "torch": torch.__version__,
        "edgeprune": edgeprune.__version__,
        "threads": a.threads,
        "batch": a.batch,
        "method": "median of timed iterations after 1 warm-up; synthetic 32x32 inputs",
        "results": results,
    }
    write_json(a.out, doc)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
