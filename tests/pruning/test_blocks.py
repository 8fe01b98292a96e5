"""Block removal: below the channel floor the pruner removes whole residual blocks, losslessly,
and the result is priced, saved and loaded as the network without them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

import edgeprune
from edgeprune.errors import ConfigError, ProfileError
from edgeprune.graph.blocks import remove_blocks
from edgeprune.models.checkpoint import read_header
from edgeprune.models.removed import RemovedBlock
from edgeprune.profiling.latency import LatencyProfile
from edgeprune.pruning.cost import LatencyCost
from tests.nets import FAST, committed_profile_here, random_batches, randomize_bn
from tests.pruning.test_pruner import macs_of

ROOT = Path(__file__).resolve().parents[2]
CFG = FAST.replace(round_to=16)


def _resnet20() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(edgeprune.models.create("resnet20"))


def test_below_the_channel_floor_blocks_are_removed_losslessly(tmp_path):
    model = _resnet20()
    with pytest.raises(ConfigError, match=r"below the smallest reachable .* every group at 16 channels; .*remove_blocks=True"):
        edgeprune.prune(model, random_batches(), target="macs", budget_ratio=0.3,
                        config=CFG.replace(remove_blocks=False))
    res = edgeprune.prune(model, random_batches(), target="macs", budget_ratio=0.3, config=CFG)
    assert len(res.removable_blocks) == 7 and res.removed_blocks
    assert set(res.removed_blocks) <= set(res.removable_blocks)
    modules = dict(res.model.named_modules())
    assert all(isinstance(modules[b], RemovedBlock) for b in res.removed_blocks)
    assert res.predicted_cost <= res.budget
    assert macs_of(res.model, 16) == pytest.approx(res.predicted_cost)  # torch counts it too
    assert res.removal_max_abs_diff <= 1e-4
    gone = {f"{b}.conv1" for b in res.removed_blocks}
    assert all(res.widths_after[p] == (0, 0) for p in gone)
    assert f"residual blocks removed: {len(res.removed_blocks)} of 7" in str(res)
    assert "--distill-epochs 8" in str(res)  # the measured remedy, named where blocks went
    distilled = dataclasses.replace(res, distill={"epochs": 8, "steps": 1, "lr": 0.05, "seconds": 1.0,
                                                  "heldout_kl_before": 0.1, "heldout_kl_after": 0.05})
    assert "--distill-epochs" not in str(distilled) and "distilled from the teacher" in str(distilled)
    d = res.to_dict()
    assert d["removed_blocks"] == list(res.removed_blocks)
    # the checkpoint rebuilds the network without the removed blocks
    path = edgeprune.save(res.model, tmp_path / "pruned.safetensors")
    loaded = edgeprune.load(path)
    x = random_batches(n=1, seed=3)[0]
    with torch.no_grad():
        assert torch.equal(loaded(x), res.model.eval()(x))
    assert all(isinstance(dict(loaded.named_modules())[b], RemovedBlock) for b in res.removed_blocks)
    kinds = {k: v["kind"] for k, v in read_header(path)["layers"].items()}
    assert sorted(k for k, v in kinds.items() if v == "removed") == sorted(res.removed_blocks)
    # an unpruned model records no removed block (its own identities, e.g. shortcuts, are code)
    full = read_header(edgeprune.save(model, tmp_path / "full.safetensors"))["layers"]
    assert "layer1.0.shortcut" not in full and all(v["kind"] != "removed" for v in full.values())


def test_above_the_channel_floor_blocks_stay_unless_asked():
    model = _resnet20()
    res = edgeprune.prune(model, random_batches(), target="macs", budget_ratio=0.6, config=CFG)
    assert res.removable_blocks == () and res.removed_blocks == ()
    # tracking the blocks (the default) changes nothing above the floor: same run as without
    off = edgeprune.prune(model, random_batches(), target="macs", budget_ratio=0.6,
                          config=CFG.replace(remove_blocks=False))
    assert off.group_widths_after == res.group_widths_after
    sa, sb = res.model.state_dict(), off.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    on = edgeprune.prune(model, random_batches(), target="macs", budget_ratio=0.6,
                         config=CFG.replace(remove_blocks=True))
    assert len(on.removable_blocks) == 7 and on.predicted_cost <= on.budget
    assert on.removal_max_abs_diff <= 1e-4


def test_a_latency_profile_prices_a_model_without_some_blocks():
    profile = LatencyProfile.load(ROOT / "profiles" / "host-litert" / "resnet20.json", check_host=False)
    model = _resnet20().eval()
    removed = remove_blocks(model, ["layer1.1", "layer3.2"])
    blocks = profile.breakdown(model)
    expected = profile.predict_ms(model) - sum(v for k, v in blocks.items()
                                               if k.startswith(("layer1.1.", "layer3.2.")))
    assert profile.predict_ms(removed) == pytest.approx(expected)
    cost = LatencyCost(profile, model)
    widths = {p: (0, 0) for p in ("layer1.1.conv1", "layer1.1.conv2", "layer3.2.conv1", "layer3.2.conv2")}
    assert cost(widths) == pytest.approx(expected)
    # a layer missing for any other reason is still another architecture
    other = _resnet20().eval()
    other.layer1[1].conv2 = nn.Identity()
    with pytest.raises(ProfileError, match="profiled layers missing"):
        profile.predict_ms(other)
    plain = _resnet20().eval()
    plain.layer1[1] = nn.Identity()  # the user's own edit, not a block pruning removed
    with pytest.raises(ProfileError, match="profiled layers missing"):
        profile.predict_ms(plain)


def test_a_profile_that_prices_the_blockless_network_at_or_below_zero_is_refused_there(tmp_path):
    """A fit that never saw a network without blocks can extrapolate to a negative floor
    (the committed ResNet-20 profile once predicted -0.0009 ms): below the channel floor such a
    profile is refused, with the fix; above it, channel pruning still prices with it."""
    import dataclasses

    good = LatencyProfile.load(committed_profile_here(ROOT / "profiles" / "host-litert" / "resnet20.json",
                                                      tmp_path))
    model = _resnet20()
    reach = edgeprune.budget_range(model, target="host-litert", profile=good, config=CFG)
    assert 0 < reach.floor < reach.channel_floor
    bad = dataclasses.replace(good, remainder_intercept_ms=-reach.floor - 0.01)  # floor now < 0
    with pytest.raises(ProfileError, match=r"predicts -[0-9.]+ ms for the network with all 7 removable .*re-profile"):
        edgeprune.budget_range(model, target="host-litert", profile=bad, config=CFG)
    off = edgeprune.budget_range(model, target="host-litert", profile=bad, config=CFG.replace(remove_blocks=False))
    assert off.floor == off.channel_floor > 0
    with pytest.raises(ProfileError, match=r"remove_blocks=False; CLI: --no-remove-blocks"):
        edgeprune.prune(model, random_batches(), target="host-litert", profile=bad,
                        budget_ms=0.9 * off.channel_floor, config=CFG.replace(verify=False))


def test_budget_range_reaches_below_the_channel_floor_only_with_blocks():
    model = _resnet20()
    reach = edgeprune.budget_range(model, target="macs", input_shape=(3, 16, 16), config=CFG)
    assert reach.floor < reach.channel_floor < reach.baseline
    assert reach.channel_floor / reach.baseline == pytest.approx(0.468, abs=0.001)  # as the error says
    off = edgeprune.budget_range(model, target="macs", input_shape=(3, 16, 16),
                                 config=CFG.replace(remove_blocks=False))
    assert off.floor == off.channel_floor == reach.channel_floor
    # the pruner reaches (nearly) that floor: almost every group at 16 and the blocks gone
    res = edgeprune.prune(model, random_batches(), target="macs", budget_ms=reach.floor * 1.02,
                          config=CFG)
    assert res.predicted_cost <= reach.floor * 1.02 and len(res.removed_blocks) >= 6


def test_a_closed_loop_round_below_the_channel_floor_removes_blocks():
    """Pruned above the channel floor, blocks stay; a crafted measurement 40% over the budget
    asks for an internal budget below that floor, so the next round may remove blocks."""
    from edgeprune.pruning.cost import MacsCost
    from edgeprune.pruning.pruner import run

    model = _resnet20()
    cost = MacsCost(model, (3, 16, 16))
    budget = 0.55 * cost.of_model(model)  # the channel floor is 0.468x
    res = run(model, random_batches(), cost=cost, budget=budget, target="macs", round_to=16,
              config=CFG.replace(verify_rounds=1, verify_early=False),
              measure=lambda m: (1.4 * cost.of_model(m), budget))
    first, second = res.verify
    assert first["measured_ms"] > budget and first["internal_budget"] == pytest.approx(budget)
    assert second["internal_budget"] < 0.468 * cost.of_model(model)
    assert len(res.removable_blocks) == 7 and res.removed_blocks
    assert res.removal_max_abs_diff <= 1e-4 and res.predicted_cost <= second["internal_budget"]
    kept = edgeprune.prune(model, random_batches(), target="macs", budget_ratio=0.55, config=CFG)
    assert kept.removable_blocks == () and kept.removed_blocks == ()


def test_a_model_without_some_blocks_exports_and_validates(tmp_path):
    model = _resnet20()
    data = random_batches(n=10, batch=16, hw=32)
    res = edgeprune.prune(model, data, target="macs", budget_ratio=0.3, config=CFG)
    assert res.removed_blocks
    bundle = edgeprune.export(res.model, tmp_path / "bundle", data=data,
                              config=edgeprune.ExportConfig(formats=("tflite", "onnx")))
    report = edgeprune.validate(bundle, data)
    assert {c.format: c.status for c in report.checks} == {"tflite": "pass", "onnx": "pass"}


def test_a_zero_channel_outside_the_sparse_set_is_priced_on_the_grid():
    """While E_t's channels shrink, some reach zero before others (17 zero: a 16-channel
    block done and one of the next); that off-grid width is priced at the next multiple of
    round_to up. A profile without measured channel steps refuses off-grid widths, which
    stopped a ResNet-56 run."""
    from edgeprune.pruning.cost import MacsCost
    from edgeprune.pruning.pruner import Pruner

    model = _resnet20()
    cost = MacsCost(model, (3, 16, 16))
    p = Pruner(model, cost=cost, budget=0.3 * cost.of_model(model), target="macs", round_to=16, config=CFG)
    p.prepare(random_batches(n=2), 30)
    zero = [0] * len(p.groups)
    stream = [g.name for g in p.groups].index("layer3.0.shortcut.0")
    zero[stream] = 17  # 64 - 17 = 47 -> priced as 48
    widths = {g.name: g.width for g in p.groups} | {"layer3.0.shortcut.0": 48}
    assert p._zero_cost(zero) == pytest.approx(p._cost_of(widths))
    p.close()
