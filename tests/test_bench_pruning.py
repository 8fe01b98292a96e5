"""The peer in scripts/bench_pruning.py is given a working configuration: Torch-Pruning's
widths follow round_to, the output layer keeps its classes, Taylor importance uses its
gradient, and rows of a later invocation replace the same rows of an earlier one on the same host."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from edgeprune import models
from tests.nets import randomize_bn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_pruning as bench  # noqa: E402


@pytest.fixture(scope="module")
def cx():
    torch.manual_seed(0)
    # BatchNorm scales of a trained model differ (fresh ones are all 1: BNScale sees only ties)
    return SimpleNamespace(teacher=randomize_bn(models.create("resnet20")).eval(),
                           example=torch.zeros(1, 3, 32, 32), round_to=16)


@pytest.mark.parametrize("criterion", bench.TP_CRITERIA)
@pytest.mark.parametrize("global_", [True, False])
def test_torch_pruning_prunes_to_multiples_of_round_to_and_keeps_the_classes(cx, criterion, global_):
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g))
    m = bench._tp_prune(cx, criterion, 0.5, global_, batch)
    base = {n: mod.out_channels for n, mod in cx.teacher.named_modules() if isinstance(mod, torch.nn.Conv2d)}
    got = {n: mod.out_channels for n, mod in m.named_modules() if isinstance(mod, torch.nn.Conv2d)}
    assert got.keys() == base.keys()
    assert all(w % 16 == 0 and 0 < w <= base[n] for n, w in got.items()), got
    assert sum(got.values()) < sum(base.values())  # it pruned
    assert m.fc.out_features == 10 and m(cx.example).shape == (1, 10)
    assert sum(p.numel() for p in cx.teacher.parameters()) == 272474  # the teacher is untouched


def test_rows_merge_by_model_method_budget_seed_and_host():
    """A re-run replaces its own host's rows and keeps another CPU's: a result file's rows
    hold for the host that measured each (rows older than the per-row host take the file's)."""
    import _bench

    here = _bench.host_identity()
    other = {**here, "isa": sorted(set(here["isa"]) ^ {"avx512_vnni"})}  # same name, another CPU
    doc = {"host": here, "rows": [
        {"model": "r", "method": "a", "budget_ratio": 0.5, "seed": 0, "top1": 1},
        {"model": "r", "method": "a", "budget_ratio": 0.7, "seed": 0, "top1": 2},
        {"model": "r", "method": "a", "budget_ratio": 0.5, "seed": 0, "top1": 4, "host": other}]}
    old = _bench.rows_with_host(doc)
    assert [r["host"] for r in old] == [here, here, other]
    new = [{"model": "r", "method": "a", "budget_ratio": 0.5, "seed": 0, "top1": 3}]
    merged = _bench.merge_rows(old, new, key=bench._row_key)
    assert [(r["budget_ratio"], r["top1"]) for r in merged] == [(0.7, 2), (0.5, 4), (0.5, 3)]
    assert merged[-1]["host"] == here
