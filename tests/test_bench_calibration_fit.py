"""scripts/bench_calibration_fit.py prices a network as a profile does (edgeprune's
``fitted_ms``, from the two table sums it keeps per network), and counts a variant exactly
10% off as within 10%."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_calibration_fit as bench  # noqa: E402


def test_a_fit_prices_narrow_layers_with_their_own_scale():
    # 0.3 ms of layers, 0.1 of them narrow: 0.01 + 1.1 x 0.2 + 1.5 x 0.1
    assert bench.fitted_ms((0.01, 1.1, 1.5), 0.3, 0.1) == pytest.approx(0.38)
    assert bench.fitted_ms((0.01, 1.1, 1.5), 0.3, 0.0) == pytest.approx(0.34)


def test_the_summary_counts_the_bar_inclusively_and_keeps_the_sign_of_the_median():
    s = bench._summary([10.0, -10.0, 10.5, 2.0])
    assert s == {"within_10pct": 0.75, "median_error_pct": 6.0, "max_abs_error_pct": 10.5}
