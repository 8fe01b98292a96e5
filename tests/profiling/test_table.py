import math

import numpy as np
import pytest

from edgeprune.errors import ProfileError
from edgeprune.profiling.table import LayerTable, axis_grid, fit_step


def test_axis_grid_steps_by_round_to():
    assert axis_grid([16], [], round_to=8, max_points=5) == (8, 16)
    assert axis_grid([32], [], round_to=8, max_points=5) == (8, 16, 24, 32)


def test_axis_grid_thins_evenly_keeping_ends():
    # 8..64 is 8 steps; 5 points at indices 0, 2, 4, 5, 7 -> widths 8, 24, 40, 48, 64
    assert axis_grid([64], [], round_to=8, max_points=5) == (8, 24, 40, 48, 64)


def test_axis_grid_keeps_fixed_and_odd_full_widths():
    assert axis_grid([16], [3], round_to=8, max_points=5) == (3, 8, 16)
    assert axis_grid([20], [], round_to=8, max_points=5) == (8, 16, 20)
    assert axis_grid([], [10], round_to=8, max_points=5) == (10,)


def test_axis_grid_measures_one_thin_width_below_round_to():
    assert axis_grid([32], [], round_to=8, max_points=5, thin=2) == (2, 8, 16, 24, 32)
    assert axis_grid([64], [3], round_to=16, max_points=2, thin=4) == (3, 4, 16, 64)
    assert axis_grid([], [10], round_to=8, max_points=5, thin=2) == (10,)  # nothing is pruned
    assert axis_grid([3], [], round_to=8, max_points=5, thin=4) == (3,)  # nothing that thin is needed


def _table():
    # latency = 1 + 0.1 * c_in + 0.01 * c_out on the grid (bilinear is exact for it)
    ci, co = (8, 16, 32), (8, 24)
    return LayerTable("conv:test", "conv", ci, co,
                      tuple(tuple(1 + 0.1 * i + 0.01 * o for o in co) for i in ci))


def test_lookup_on_grid_and_between():
    t = _table()
    assert t.lookup(16, 24) == pytest.approx(1 + 1.6 + 0.24)
    assert t.lookup(12, 16) == pytest.approx(1 + 1.2 + 0.16)  # midway both axes
    assert t.lookup(24, 8) == pytest.approx(1 + 2.4 + 0.08)


def test_lookup_bilinear_golden_with_interaction():
    t = LayerTable("x", "conv", (0, 10), (0, 10), ((0.0, 1.0), (2.0, 7.0)))
    # f(a, b) = (1-a)(1-b)*0 + (1-a)b*1 + a(1-b)*2 + ab*7 at a = 0.3, b = 0.6
    assert t.lookup(3, 6) == pytest.approx(0.7 * 0.6 * 1 + 0.3 * 0.4 * 2 + 0.3 * 0.6 * 7)


def test_lookup_clamps_outside_the_grid():
    t = _table()
    assert t.lookup(4, 8) == pytest.approx(t.lookup(8, 8))
    assert t.lookup(64, 100) == pytest.approx(t.lookup(32, 24))


def test_depthwise_table_is_one_dimensional():
    t = LayerTable("dw", "dwconv", (8, 16), (0,), ((1.0,), (3.0,)))
    assert t.lookup(12, 999) == pytest.approx(2.0)


@pytest.mark.parametrize("kwargs, msg", [
    (dict(c_in=(8, 16), c_out=(8,), latency_ms=((1.0,),)), "not 2 x 1"),
    (dict(c_in=(16, 8), c_out=(8,), latency_ms=((1.0,), (2.0,))), "strictly increasing"),
    (dict(c_in=(8,), c_out=(8,), latency_ms=((float("nan"),),)), "not a finite"),
    (dict(c_in=(8,), c_out=(8,), latency_ms=((-1.0,),)), "not a finite number >= 0"),
])
def test_invalid_tables(kwargs, msg):
    with pytest.raises(ProfileError, match=msg):
        LayerTable("bad", "conv", **kwargs)


def test_round_trip():
    t = _table()
    assert LayerTable.from_dict(t.signature, t.to_dict()) == t
    with pytest.raises(ProfileError, match="malformed"):
        LayerTable.from_dict("x", {"kind": "conv", "c_in": [8]})


def _staircase(tile, height=1.0, r=16, base=1.0, rise=1.0):
    return [base + rise * height * math.ceil(d / tile) * tile / r for d in range(1, r)]


@pytest.mark.parametrize("tile", [1, 2, 4, 8, 16])
def test_fit_step_recovers_the_tile_of_a_staircase(tile):
    fit = fit_step(1.0, _staircase(tile), 2.0)
    assert (fit["step"], fit["height"], fit["flat"]) == (tile, pytest.approx(1.0), False)
    assert fit["share"] == pytest.approx([math.ceil(d / tile) * tile / 16 for d in range(17)])


def test_fit_step_keeps_a_remainder_that_costs_more_than_the_whole_step():
    # a narrower kernel for a small remainder: every width past the grid point pays 1.6 steps
    fit = fit_step(1.0, [2.6] * 15, 2.0)
    assert fit["step"] == 16 and fit["height"] == pytest.approx(1.6)
    assert fit["share"][1:16] == pytest.approx([1.6] * 15) and fit["share"][16] == 1.0


@pytest.mark.parametrize("tile, noise, at_least", [(8, 0.1, 18), (16, 0.15, 20), (1, 0.15, 20)])
def test_fit_step_sees_the_tile_through_timing_noise(tile, noise, at_least):
    rng = np.random.default_rng(0)
    hits = sum(fit_step(1.0, [v + rng.normal(0, noise) for v in _staircase(tile)], 2.0)["step"] == tile
               for _ in range(20))  # noise as a share of the step's rise, on every point
    assert hits >= at_least


def test_fit_step_reads_a_noisy_line_as_a_line():
    # a real probe of a 3x3 conv's input channels on this project's noisy host (32..48 channels):
    # a 16-tile staircase fits it about as well as a line; the line is kept
    ms = [0.202622, 0.198209, 0.269758, 0.276931, 0.286444, 0.252635, 0.289039, 0.305645, 0.248603,
          0.243033, 0.247842, 0.253127, 0.259689, 0.271907, 0.287541, 0.277633, 0.322386]
    fit = fit_step(ms[0], ms[1:-1], ms[-1])
    assert fit["step"] == 1 and fit["height"] == 1.0


def test_a_step_no_staircase_fits_is_kept_as_measured():
    # multiples of 4 take a fast path, every other width a path that costs two steps
    ms = [1.0 + (d / 16 if d % 4 == 0 else 2.0) for d in range(1, 16)]
    fit = fit_step(1.0, ms, 2.0)
    assert fit["irregular"] and fit["step"] is None and fit["fit_rms"] > 0.5
    assert fit["share"] == pytest.approx([0.0, *(d / 16 if d % 4 == 0 else 2.0 for d in range(1, 16)), 1.0])


def test_a_staircase_that_misses_one_width_by_half_a_step_is_not_kept():
    # ONNX Runtime's probe of resnet20's 3x3 conv input channels (32..48) on an AVX-512 host:
    # 36, 40 and 44 channels cost about one step, the other widths 1-2.2 steps. A 4-tile
    # staircase fits that at rms 0.33 (under IRREGULAR_RMS) but prices 44 channels at 1.72
    # steps where 1.07 was measured, so the measured shares are kept
    ms = [0.17197, 0.251138, 0.257627, 0.265418, 0.255044, 0.279875, 0.287982, 0.295273, 0.255709,
          0.313791, 0.322899, 0.326905, 0.260176, 0.341998, 0.349148, 0.354731, 0.254638]
    fit = fit_step(ms[0], ms[1:-1], ms[-1])
    assert fit["irregular"] and fit["fit_rms"] < 0.5
    assert fit["share"][12] == pytest.approx(1.067, abs=1e-3)
    assert fit["share"][1:16] == pytest.approx([max(0.0, m) for m in fit["measured_share"]], abs=1e-4)


def test_a_flat_step_falls_back_to_a_straight_line():
    fit = fit_step(1.0, [1.3, 0.7] * 7 + [1.0], 1.05)  # 5% rise: noise, not a step
    assert fit["flat"] and fit["step"] == 1
    assert fit["share"] == pytest.approx([d / 16 for d in range(17)])


def test_lookup_off_the_grid_follows_the_measured_step():
    # c_out grid 16, 32 (1 ms, 2 ms): at 20 channels a tile-16 runtime already pays for 32
    t = LayerTable("conv:t", "conv", (16,), (16, 32), ((1.0, 2.0),))
    tile16 = fit_step(1.0, _staircase(16), 2.0)["share"]
    line = fit_step(1.0, _staircase(1), 2.0)["share"]
    assert t.lookup(16, 20, share_out=tile16) == pytest.approx(2.0)
    assert t.lookup(16, 20, share_out=line) == pytest.approx(t.lookup(16, 20)) == pytest.approx(1.25)
    assert t.lookup(16, 32, share_out=tile16) == 2.0  # a grid width is what was measured
    # both axes: the shares weight the four surrounding multiples of round_to
    t2 = LayerTable("conv:t2", "conv", (16, 32), (16, 32), ((1.0, 2.0), (3.0, 4.0)))
    assert t2.lookup(20, 20, share_in=line, share_out=tile16) == pytest.approx(0.75 * 2.0 + 0.25 * 4.0)


def test_a_width_below_the_first_step_climbs_from_zero_channels():
    t = LayerTable("conv:t", "conv", (16, 32), (16, 32), ((1.0, 2.0), (2.0, 4.0)))
    line = fit_step(1.0, _staircase(1), 2.0)["share"]
    tile16 = fit_step(1.0, _staircase(16), 2.0)["share"]
    assert t.lookup(8, 16, share_in=line) == pytest.approx(0.5)  # not clamped to 16's 1.0
    assert t.lookup(8, 8, share_in=line, share_out=tile16) == pytest.approx(0.5)
    assert t.lookup(4, 40, share_in=line, share_out=line) == pytest.approx(0.25 * 2.0)  # c_out clamps


def test_a_width_below_round_to_climbs_from_the_thin_width_measured_there():
    """A layer at 4 channels measured at 0.5 ms where 16 cost 1.0 (half of it paid whatever
    the width): 8 and 12 channels are priced between the two measurements by the probe's
    share, 2 channels below 4 by the share from zero; without the thin column the share
    scales the width-16 cost and prices 8 channels at 0.5, missing the fixed part."""
    line = fit_step(1.0, _staircase(1), 2.0)["share"]  # d / 16
    tile8 = fit_step(1.0, _staircase(8), 2.0)["share"]  # 0.5 up to 8 channels, then 1.0
    t = LayerTable("conv:t", "conv", (16,), (4, 16, 32), ((0.5, 1.0, 2.0),))
    assert t.lookup(16, 8, share_out=line) == pytest.approx(0.5 + 0.5 * (0.5 - 0.25) / 0.75)
    assert t.lookup(16, 12, share_out=line) == pytest.approx(0.5 + 0.5 * (0.75 - 0.25) / 0.75)
    assert t.lookup(16, 2, share_out=line) == pytest.approx(0.5 * 0.125 / 0.25)
    assert t.lookup(16, 4, share_out=line) == 0.5  # measured
    # a tile the thin width already fills costs what it cost there
    assert t.lookup(16, 7, share_out=tile8) == pytest.approx(0.5)
    assert t.lookup(16, 12, share_out=tile8) == pytest.approx(1.0)
    no_thin = LayerTable("conv:t", "conv", (16,), (16, 32), ((1.0, 2.0),))
    assert no_thin.lookup(16, 8, share_out=line) == pytest.approx(0.5)


def test_a_width_below_round_to_that_cost_more_than_round_to_is_never_priced_below_zero():
    """ONNX Runtime's depthwise conv on this project's AVX-512 host: the probe timed 12
    channels at 1.78x the cost of 16 (share 1.775), 4 channels at 0.86x; a small-map table
    held 4 channels above 16 (0.43 vs 0.26 us). A line through the two table points
    extrapolated to -0.5 us; the width is priced as the table's 16 channels times the share.
    A share below the thin width's prices from the thin width the same way."""
    share = [0.0, 0.1, 0.2, 0.3, 0.856, 0.9, 0.95, 1.0, 1.081, 1.2, 1.4, 1.6, 1.775, 1.7, 1.5, 1.2, 1.0]
    t = LayerTable("dwconv:t", "dwconv", (4, 16, 32), (0,), ((0.00043,), (0.00026,), (0.0004,)))
    assert t.lookup(12, 0, share_in=share) == pytest.approx(0.00026 * 1.775)
    assert t.lookup(8, 0, share_in=share) == pytest.approx(0.00026 * 1.081)
    assert t.lookup(5, 0, share_in=share) == pytest.approx(0.00043 + (0.00026 - 0.00043) * (0.9 - 0.856) / (1 - 0.856))
    low = [0.0, 0.1, 0.2, 0.3, 0.8, 0.5, *share[6:]]  # 5 channels timed below 4
    assert t.lookup(5, 0, share_in=low) == pytest.approx(0.00043 * 0.5 / 0.8)
    assert all(t.lookup(w, 0, share_in=share) > 0 for w in range(1, 16))


def test_fit_step_reads_a_narrower_kernel_below_one_tile():
    # resnet20's first-step probe of a 3x3 conv's output channels (1..16 at 32x32, 32 in)
    # on this project's AVX2 host: up to 8 channels XNNPACK runs an 8-wide kernel at 0.6 of
    # 16 channels' cost, 9..15 take two of them (1.2x), 16 one 16-wide tile
    ms = [0.0, 0.057623, 0.057813, 0.057934, 0.059477, 0.058375, 0.059657, 0.059081, 0.05898,
          0.117014, 0.119028, 0.117736, 0.116333, 0.118162, 0.117456, 0.118312, 0.096566]
    fit = fit_step(ms[0], ms[1:-1], ms[-1])
    assert (fit["step"], fit["irregular"]) == (8, False) and fit["height"] == pytest.approx(1.218, abs=2e-3)
    assert fit["share"][8] == pytest.approx(0.609, abs=2e-3) and fit["share"][12] > 1.2
