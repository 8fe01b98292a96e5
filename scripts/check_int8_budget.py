"""Re-times bench_prune's int8 ResNet-20 row beside a fresh int8 profile, under the same conditions.

bench_prune prunes with the committed profile and times afterwards; on a VM whose vCPUs differ
in speed the two can run at different speeds. This rebuilds the pruned structure from the
row's group widths (latency depends on structure), exports baseline and pruned model as int8
with 500 unlabeled train images, times them in 5 interleaved rounds, and compares them with a
profile measured now. Writes bench/results/int8_budget_check.json.

    EDGEPRUNE_TIMING_CPUS=1 .venv/bin/python scripts/check_int8_budget.py
"""

from __future__ import annotations

import json
import statistics
import tempfile
import warnings
from pathlib import Path

import torch
from _bench import provenance  # scripts/_bench.py, beside this file

import edgeprune
from edgeprune import data
from edgeprune._io import write_json
from edgeprune.convert import to_tflite_int8
from edgeprune.graph import shrink_to_widths
from edgeprune.profiling.measurement import time_artifacts
from edgeprune.targets import load_target

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 0.6


def main() -> int:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    row = json.loads((ROOT / "bench/results/prune_resnet20-shapes_host-litert-int8.json").read_text())["rows"][0]
    teacher = edgeprune.load(ROOT / "bench/baselines/resnet20-shapes/model.safetensors")
    spec = teacher.edgeprune_spec
    ex = torch.zeros(1, *spec.input.shape)
    pruned = shrink_to_widths(teacher, ex, row["group_widths_after"])
    t = load_target("host-litert-int8")
    prof = edgeprune.profile(teacher, target=t)
    src = data.open("shapes", split="train", size=spec.input.hw, limit=500)
    calib = list(data.Batches(src, 100, mean=spec.input.mean, std=spec.input.std, shuffle=False))
    rb, rp = [], []
    with tempfile.TemporaryDirectory() as d:
        a = to_tflite_int8(teacher, Path(d) / "b.tflite", ex, calib, min_images=500)
        b = to_tflite_int8(pruned, Path(d) / "p.tflite", ex, calib, min_images=500)
        for _ in range(5):
            sb, sp = time_artifacts([a, b], t)
            rb.append(sb.median_ms)
            rp.append(sp.median_ms)
    pb, pp = prof.predict_ms(teacher), prof.predict_ms(pruned)
    mb, mp = statistics.median(rb), statistics.median(rp)
    out = {
        "what": "bench_prune's int8 pruned ResNet-20 (its group widths) and the baseline, exported "
                "with real calibration, re-timed beside a fresh profile under the same conditions",
        **provenance("int8_budget_check", "check_int8_budget.py", None),
        "budget_ratio": BUDGET, "baseline_predicted_ms": pb, "pruned_predicted_ms": pp,
        "budget_ms": BUDGET * pb, "baseline_measured_ms": mb, "pruned_measured_ms": mp,
        "baseline_rounds_ms": rb, "pruned_rounds_ms": rp,
        "measured_over_budget": mp / (BUDGET * pb),
        "baseline_measured_over_predicted": mb / pb, "pruned_measured_over_predicted": mp / pp,
        "profile_build": prof.build,
    }
    print(json.dumps(out, indent=1))
    write_json(ROOT / "bench/results/int8_budget_check.json", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
