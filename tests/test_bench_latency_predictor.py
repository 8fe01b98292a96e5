"""scripts/bench_latency_predictor.py separates the profile's level from its shape: a profile
built while the machine ran 10% slow predicts every variant 10% high, and the level-corrected
error takes exactly that out, and nothing else."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_latency_predictor as bench  # noqa: E402


def test_the_level_corrected_error_takes_out_the_baselines_ratio_only():
    measured = [1.0, 0.5, 0.25, 0.8]
    rows = [{"predicted_ms": 1.1 * m, "measured_ms": m} for m in measured]
    lc = bench.level_corrected(rows, level=1.1)  # every prediction 10% high, as the baseline's
    assert lc["within_10pct"] == 1.0 and lc["max_abs_error_pct"] == pytest.approx(0, abs=1e-9)
    rows[1]["predicted_ms"] = 1.1 * 0.5 * 1.2  # one variant 20% off in shape
    lc = bench.level_corrected(rows, level=1.1)
    assert lc["within_10pct"] == 0.75 and lc["max_abs_error_pct"] == pytest.approx(20)
    assert bench.level_corrected(rows, level=1.0)["within_10pct"] == 0.0  # raw: all > 10% off
