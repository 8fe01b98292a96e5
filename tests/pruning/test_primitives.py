import numpy as np
import pytest
import torch

from edgeprune.pruning.ista import group_soft_threshold
from edgeprune.pruning.select import select_channels


def test_group_soft_threshold_golden():
    g = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0], [-6.0, 8.0]])
    out = group_soft_threshold(g, 1.0)
    expected = torch.tensor([[2.4, 3.2], [0.0, 0.0], [0.0, 0.0], [-5.4, 7.2]])  # x(1 - 1/5), 0, 0, x0.9
    assert torch.allclose(out, expected)
    assert (out[1] == 0).all() and (out[2] == 0).all()  # exactly zero, not tiny
    assert torch.equal(group_soft_threshold(g, 0.0), g)
    with pytest.raises(ValueError):
        group_soft_threshold(g, -1.0)
    # one threshold per row (scaled by sqrt of each gate's size in the pruner)
    per_row = group_soft_threshold(g, torch.tensor([2.5, 0.1, 1.0, 20.0]))
    assert torch.allclose(per_row, torch.tensor([[1.5, 2.0], [0.24, 0.32], [0.0, 0.0], [0.0, 0.0]]))


def _linear_latency(cost):
    return lambda widths: sum(cost[g] * w for g, w in widths.items())


SENS = {"a": np.ones(4), "b": np.ones(4), "c": np.full(4, 10.0)}
COST = {"a": 1.0, "b": 3.0, "c": 3.0}  # ms per channel


def test_selection_golden_three_groups():
    # full latency 4 + 12 + 12 = 28 ms; budget 22 needs 6 ms saved. Per 2-channel block:
    # a: value 2 / 2 ms = 1.0; b: 2 / 6 ms = 0.33; c: 20 / 6 ms = 3.3 -> drop a block of b
    sel = select_channels(SENS, _linear_latency(COST), 22.0, round_to=2, min_width=2)
    assert sel.widths == {"a": 4, "b": 2, "c": 4}
    assert sel.predicted_cost == pytest.approx(22.0) and sel.met_budget
    # budget 20: b is at its floor; the next best is a (1.0) before c (3.3): 22 -> 20 ms
    sel = select_channels(SENS, _linear_latency(COST), 20.0, round_to=2, min_width=2)
    assert sel.widths == {"a": 2, "b": 2, "c": 4} and sel.predicted_cost == pytest.approx(20.0)
    # budget 19: only c is left to thin: 20 -> 14 ms, 5 ms more than needed; the refill gives
    # a's block back (2 ms: 16 <= 19; b's would cost 6)
    sel = select_channels(SENS, _linear_latency(COST), 19.0, round_to=2, min_width=2)
    assert sel.widths == {"a": 4, "b": 2, "c": 2} and sel.predicted_cost == pytest.approx(16.0)
    assert sel.met_budget
    # an unreachable budget stops at the floors and says so
    sel = select_channels(SENS, _linear_latency(COST), 10.0, round_to=2, min_width=2)
    assert sel.widths == {"a": 2, "b": 2, "c": 2} and not sel.met_budget


def test_selection_keeps_the_most_sensitive_channels():
    sens = {"a": np.array([5.0, 0.1, 4.0, 0.2])}
    sel = select_channels(sens, _linear_latency({"a": 1.0}), 2.0, round_to=1, min_width=1)
    assert sel.keep["a"].tolist() == [0, 2]


def test_latency_weighting_switch_changes_the_choice():
    # 6 ms to save from 20. Per 2-channel block a is worth 2 for 2 ms, b 3 for 6 ms: weighted,
    # b goes (0.5 per ms); by value alone three blocks of a go (2 each, less than 3)
    sens = {"a": np.ones(8), "b": np.full(4, 1.5)}
    cost = _linear_latency({"a": 1.0, "b": 3.0})
    on = select_channels(sens, cost, 14.0, round_to=2, min_width=2)
    off = select_channels(sens, cost, 14.0, round_to=2, min_width=2, latency_weighting=False)
    assert on.widths == {"a": 8, "b": 2} and off.widths == {"a": 2, "b": 4}
    assert on.predicted_cost == off.predicted_cost == pytest.approx(14.0)


def test_selection_respects_round_to_and_min_width():
    sens = {"a": np.arange(20, dtype=float)}
    sel = select_channels(sens, _linear_latency({"a": 1.0}), 0.0, round_to=8, min_width=8)
    assert sel.widths == {"a": 8} and not sel.met_budget  # 20 -> 16 -> 8, never below 8


def test_selection_crosses_a_flat_stretch_of_the_latency_table():
    """Group a's latency steps every 8 channels (16 -> 8 saves 6 ms, 16 -> 12 nothing), b is
    linear and expensive per unit of value. Priced block by block, a's first block saves
    nothing and a could never be thinned; priced to the first block that saves, a's two
    blocks together are the better deal."""
    sens = {"a": np.ones(16), "b": np.full(16, 10.0)}

    def step_latency(widths):
        return 6.0 * np.ceil(widths["a"] / 8) + 0.5 * widths["b"]

    sel = select_channels(sens, step_latency, 18.0, round_to=4, min_width=4)
    assert sel.widths == {"a": 8, "b": 16} and sel.predicted_cost == pytest.approx(14.0)
    # without the look-ahead a block of b (value 40, 2 ms) would have gone instead of a (value 8)
    assert sel.met_budget


def test_the_refill_gives_back_what_an_overshooting_last_step_did_not_need():
    """18 ms to save from 48 with a budget of 30. b's blocks are the cheapest per ms (0.01)
    and go first (b at its floor, 44 ms); then a's 20 ms block (0.02 per ms) overshoots to
    24 ms. b's block fits again (28 <= 30) and comes back; a's would not (44)."""
    sens = {"a": np.full(8, 0.1), "b": np.full(8, 0.01)}
    cost = _linear_latency({"a": 5.0, "b": 1.0})
    sel = select_channels(sens, cost, 30.0, round_to=4, min_width=4)
    assert sel.widths == {"a": 4, "b": 8} and sel.predicted_cost == pytest.approx(28.0)
    # a removed block comes back the same way when the budget allows it
    blocks = {"a": np.full(8, 0.1), "blk": np.array([0.05])}
    lat = lambda w: 5.0 * w["a"] + 3.0 * w["blk"]  # noqa: E731
    sel = select_channels(blocks, lat, 33.0, round_to=4, min_width=4, blocks=["blk"])
    assert sel.widths == {"a": 4, "blk": 1} and sel.predicted_cost == pytest.approx(23.0)


def test_an_exchange_gives_back_a_large_block_that_a_small_one_can_replace():
    """0.40 ms: 0.10 fixed, three large blocks of 0.09 and a small one of 0.03; budget 0.20.
    Per ms the large blocks are cheaper (1/0.09 = 11 against 0.5/0.03 = 17), so greedy takes
    all three (0.13 ms, 3.0 removed) and no block fits back (0.22). Two large ones and the
    small one meet the budget too (0.19 ms) and remove less (2.5): the exchange finds that."""
    big, small = ("b1", "b2", "b3"), "s"
    sens = {**{b: np.array([1.0]) for b in big}, small: np.array([0.5])}

    def lat(w):
        return 0.10 + 0.09 * sum(w[b] for b in big) + 0.03 * w[small]

    sel = select_channels(sens, lat, 0.20, round_to=1, min_width=1, blocks=[*big, small])
    assert sel.met_budget and sel.predicted_cost == pytest.approx(0.19)
    assert sel.widths[small] == 0 and sum(sel.widths[b] for b in big) == 1
    # with a small block that matters more than a large one, greedy's choice stands
    sens[small] = np.array([1.5])
    sel = select_channels(sens, lat, 0.20, round_to=1, min_width=1, blocks=[*big, small])
    assert sel.widths == {"b1": 0, "b2": 0, "b3": 0, "s": 1}
    assert sel.predicted_cost == pytest.approx(0.13)
