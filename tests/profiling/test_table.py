import pytest

from edgeprune.errors import ProfileError
from edgeprune.profiling.table import LayerTable, axis_grid


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
