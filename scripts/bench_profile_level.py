"""How a profile's absolute level moves with the machine: the same model profiled N times in a
row (warm layer cache), each build's own end-to-end measurement of the unpruned network and
its prediction of it. Prints a table and writes bench/results/profile_level.json (rows merged
by model, target and host).

    .venv/bin/python scripts/bench_profile_level.py [--model resnet20] [--target host-litert-int8] [--builds 6]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
from _bench import merge_rows, provenance, rows_with_host  # scripts/_bench.py, beside this file

from edgeprune import models
from edgeprune._io import write_json
from edgeprune.profiling.latency import dense_copy, profile

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--target", default="host-litert-int8")
    ap.add_argument("--builds", type=int, default=6)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "profile_level.json"))
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    model = dense_copy(models.create(a.model)).eval()
    builds = []
    for i in range(a.builds):
        t0 = time.perf_counter()
        prof = profile(model, a.target, input_shape=(3, 32, 32))
        full = prof.calibration[0]  # keep 1.0: the unpruned network, measured in this build
        builds.append({"build": i, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "build_s": round(time.perf_counter() - t0, 1),
                       "full_measured_ms": round(full["measured_ms"], 5),
                       "full_predicted_ms": round(prof.predict_ms(model), 5),
                       "layers_ms": round(full["layers_ms"], 5),
                       "overhead_ms": round(prof.overhead_ms, 5)})
        b = builds[-1]
        print(f"build {i}: unpruned measured {b['full_measured_ms']:.4f} ms, predicted "
              f"{b['full_predicted_ms']:.4f} ms, layers {b['layers_ms']:.4f} ms", flush=True)
    ms = [b["full_measured_ms"] for b in builds]
    row = {"model": a.model, "target": a.target, "builds": builds,
           "full_measured_ms_min": min(ms), "full_measured_ms_max": max(ms),
           "max_over_min": round(max(ms) / min(ms), 4)}
    print(f"max / min over {len(ms)} builds: {row['max_over_min']:.3f}")
    out = Path(a.out)
    old = rows_with_host(json.loads(out.read_text())) if out.is_file() else []
    write_json(out, {**provenance("profile_level", "bench_profile_level.py", argv),
                     "method": "edgeprune.profile of the same model, N builds in a row in one process "
                               "(warm layer cache); each build's keep-1.0 calibration is its own "
                               "end-to-end measurement of the unpruned network",
                     "rows": merge_rows(old, [row], key=lambda r: (r["model"], r["target"]))})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
