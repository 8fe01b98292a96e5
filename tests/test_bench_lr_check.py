"""scripts/bench_lr_check.py on one committed teacher: the drift at each rate and the rate the
check chooses from the default, written as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_lr_check  # noqa: E402

from edgeprune.pruning.pruner import LR_CHECK_KL  # noqa: E402


def test_bench_lr_check_writes_the_drift_per_rate_and_the_chosen_rate(tmp_path, capsys):
    out = tmp_path / "lr_check.json"
    assert bench_lr_check.main(["--teachers", "resnet20-shapes", "--batch-size", "16", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    (row,) = doc["rows"]
    assert row["teacher"] == "resnet20-shapes" and set(row["drift_nats"]) == {str(r) for r in bench_lr_check.RATES}
    # the last trial is the only one within the allowance; the chosen rate is it, or one step
    # below it where the default failed; the trials divide the default by sqrt(10); the first
    # trial is the drift at 0.01 on the same batches
    trials = row["trials"]
    margin = 10 ** 0.5 if len(trials) > 1 else 1.0
    assert row["lr_from"] == 0.01 and abs(row["lr_chosen"] * margin - trials[-1]["lr"]) < 1e-12
    assert [t["lr"] for t in trials] == [0.01 * 10 ** (-i / 2) for i in range(len(trials))]
    drift = [t["heldout_kl_after"] - t["heldout_kl_before"] for t in trials]
    assert drift[-1] <= LR_CHECK_KL and all(d > LR_CHECK_KL for d in drift[:-1])
    assert abs(row["drift_nats"]["0.01"] - drift[0]) < 1e-9 and row["batch_size"] == 16
    assert doc["command"].startswith("python scripts/bench_lr_check.py")
    assert "| resnet20-shapes | 16 |" in capsys.readouterr().out
    # a second invocation for another seed keeps the first one's row
    bench_lr_check.main(["--teachers", "resnet20-shapes", "--batch-size", "16", "--seed", "1", "--out", str(out)])
    assert sorted(r["seed"] for r in json.loads(out.read_text())["rows"]) == [0, 1]
