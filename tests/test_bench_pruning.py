"""The peer in scripts/bench_pruning.py is given a working configuration: Torch-Pruning's
widths follow round_to, the output layer keeps its classes, Taylor importance uses its
gradient, and rows of a later invocation replace the same rows of an earlier one on the same host."""

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune import models
from tests.nets import randomize_bn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_pruning as bench  # noqa: E402
from _bench import progress_lines  # noqa: E402

from edgeprune.types import Progress  # noqa: E402


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


@pytest.mark.parametrize("match", [bench.MATCH, 1.0])
def test_the_peer_search_measures_each_model_once_and_acts_on_the_median_of_rounds(cx, monkeypatch, match):
    """Ratios that prune alike give one candidate, and a candidate is taken on the median of
    its per-round ratios to the baseline: one round whose baseline ran slow (so every model
    looked twice as fast) does not let a model over the budget through; ``--match`` is the
    bound it is held to."""
    base_params = sum(p.numel() for p in cx.teacher.parameters())
    models_by_art: dict = {}
    calls: list = []

    def true_ratio(m) -> float:  # this fake host's latency: proportional to the parameters
        return sum(p.numel() for p in m.parameters()) / base_params

    def artifact(m, tag):
        models_by_art[tag] = m
        return tag

    def time_rounds(arts, target, rounds):
        assert arts[0] == "baseline"
        calls.append(list(arts[1:]))
        per_round = [[2.0 if k == 0 else 1.0] + [true_ratio(models_by_art[a]) for a in arts[1:]]
                     for k in range(rounds)]  # round 0: a slow spell during the baseline's passes
        return None, per_round

    g = torch.Generator().manual_seed(2)
    batch = (torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g))
    monkeypatch.setattr(bench.data, "batches", lambda *a, **k: iter([batch]))
    monkeypatch.setattr(bench, "time_rounds", time_rounds)
    fake = SimpleNamespace(**vars(cx), base_art="baseline", base_pred=1.0, t=None,
                           a=SimpleNamespace(rounds=5, match=match, ratio_step=0.1), train_labeled=None,
                           spec=SimpleNamespace(input=SimpleNamespace(mean=None, std=None)),
                           profile=SimpleNamespace(predict_ms=true_ratio), artifact=artifact)
    r = 0.5
    best, record = bench._tp_search(fake, "l1", r)

    measured = [a for chunk in calls for a in chunk]
    widths = [bench._widths(models_by_art[a]) for a in measured]
    assert len(set(widths)) == len(widths) == len(record["measured"])  # each model timed once
    assert record["candidates"] < 2 * len(bench.ratio_grid(0.1))  # some ratios pruned alike
    assert best is not None
    for c in record["measured"]:
        assert c["round_ratios"][0] == pytest.approx(c["predicted_ratio"] / 2)  # the slow round
        assert c["measured_ratio"] == pytest.approx(c["predicted_ratio"])  # its median: the truth
    assert record["match"] == match and record["ratio_step"] == 0.1
    fitting = [c["predicted_ratio"] for c in record["measured"] if c["predicted_ratio"] <= r * match]
    assert true_ratio(best["model"]) == pytest.approx(max(fitting))
    assert true_ratio(best["model"]) <= r * match


@pytest.mark.parametrize("measured", [[], [0.532, 0.5022, 0.517]])
def test_an_infeasible_peer_row_says_why_and_how_near_it_came(monkeypatch, measured):
    """No candidate within the budget: the row says `infeasible` with the count searched and,
    when any was timed, the nearest measured ratio, else the lowest predicted one (none was
    near enough to be timed), and nothing is fine-tuned."""
    record = {"candidates": 21, "match": 1.0, "ratio_step": 0.0125, "chosen": None,
              "measured": [{"measured_ratio": m, "params": 1000 + i} for i, m in enumerate(measured)],
              "lowest_predicted": {"predicted_ratio": 0.5914, "params": 76_128}}
    monkeypatch.setattr(bench, "_tp_search", lambda cx_, criterion, r: (None, record))
    monkeypatch.setattr(bench, "_finetune", lambda *a, **k: pytest.fail("fine-tuned an infeasible row"))
    fake = SimpleNamespace(name="resnet20", ran_on="here", a=SimpleNamespace(match=1.0, epochs=8, command="c", commit="x"))
    row, model, art = bench._tp(fake, 0.5, 0, "taylor")
    assert model is None and art is None and row["search"] is record and row["labels"] is True
    assert row["infeasible"].startswith("no Torch-Pruning (taylor) candidate of 21 measured within 1.00 x 0.5")
    assert ("nearest: 0.502x, 1,001 params" in row["infeasible"]) == bool(measured)
    assert ("none was measured; lowest predicted: 0.591x, 76,128 params" in row["infeasible"]) == (not measured)


def test_the_search_record_keeps_the_lowest_predicted_candidate():
    cands = [{"ratio": r, "global": True, "params": p, "predicted_ratio": q}
             for r, p, q in [(0.3, 200, 0.71), (0.6, 90, 0.59), (0.5, 120, 0.64)]]
    rec = bench._search_record(cands, [], None, SimpleNamespace(match=1.03, ratio_step=0.0125))
    assert rec["lowest_predicted"]["params"] == 90 and rec["lowest_predicted"]["predicted_ratio"] == 0.59
    assert rec["chosen"] is None and rec["measured"] == []
    assert bench._search_record([], [], None, SimpleNamespace(match=1.03, ratio_step=0.0125))["lowest_predicted"] is None


def _row_cx(cx, args=None, **fields):
    """A stand-in for the benchmark's context where a row is made: the teacher of ``cx``,
    8 epochs, every model scoring 0.5 and predicted at 1 ms; ``args`` add command-line
    options, ``fields`` add or replace context fields."""
    a = SimpleNamespace(epochs=8, command="c", commit="x", **(args or {}))
    return SimpleNamespace(**{**vars(cx), "a": a, "name": "resnet20", "ran_on": "here",
                              "top1": lambda m, split: 0.5, "artifact": lambda m, tag: tag,
                              "profile": SimpleNamespace(predict_ms=lambda m: 1.0), **fields})


def test_edgeprune_widths_distilled_cuts_the_teacher_to_edgeprune_widths_and_distils_without_labels(cx, monkeypatch):
    """The control row for edgeprune's training: the same architecture as edgeprune's row,
    cut from the teacher, fine-tuned by distillation from that teacher (never with labels)."""
    seen = {}

    def finetune(cx_, model, seed, teacher):
        seen.update(model=model, teacher=teacher)
        return model, 0.05

    monkeypatch.setattr(bench, "_finetune", finetune)
    fake = _row_cx(cx)
    widths = {"layer3.0.shortcut.0": 32, "layer3.1.conv1": 16, "layer2.0.conv1": 16}
    row, model, art = bench._widths_distill(fake, 0.5, 3, {"group_widths_after": widths, "removed_blocks": []})
    assert seen["teacher"] is cx.teacher and row["labels"] is False and row["seed"] == 3
    assert row["method"] == bench.WIDTHS_DISTILL and row["group_widths_after"] == widths
    assert model.layer3[0].shortcut[0].out_channels == 32 and model.layer3[2].conv2.out_channels == 32
    assert model.layer3[1].conv1.out_channels == 16 and model.layer2[0].conv1.out_channels == 16
    assert model.layer3[0].conv1.out_channels == 64  # a group not named keeps its width
    assert model(cx.example).shape == (1, 10)


def test_the_fine_tuned_baseline_trains_a_copy_of_the_unpruned_teacher_with_labels(cx, monkeypatch):
    """The peers' control: the teacher at full width, fine-tuned with labels (no teacher), on
    a copy: the teacher every other row learns from or is timed against is not touched."""
    seen = {}
    before = {k: v.clone() for k, v in cx.teacher.state_dict().items()}

    def finetune(cx_, model, seed, teacher):
        seen.update(model=model, teacher=teacher, seed=seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)  # what training does to the copy must not reach the teacher
        return model, 0.01

    monkeypatch.setattr(bench, "_finetune", finetune)
    fake = _row_cx(cx)
    row, model, art = bench._teacher_finetuned(fake, 2)
    assert seen["teacher"] is None and seen["seed"] == 2 and seen["model"] is not cx.teacher
    assert row["labels"] is True and row["method"] == bench.TEACHER_FT and row["budget_ratio"] == 1.0
    assert row["finetune_epochs"] == 8 and row["finetune_lr"] == 0.01
    assert bench._widths(model) == bench._widths(cx.teacher)
    assert all(torch.equal(v, before[k]) for k, v in cx.teacher.state_dict().items())


@pytest.mark.parametrize("bad", ["0.9", "0", "nan"])
def test_a_match_below_the_budget_is_refused_with_the_bad_value(bad, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--match", bad])
    assert e.value.code == 2
    assert f"--match {float(bad)} is invalid" in capsys.readouterr().err


@pytest.mark.parametrize("label", list(bench.ABLATIONS))
def test_every_ablation_is_a_valid_config_that_changes_the_default(label):
    """A misspelt switch would fail only after an hour of benchmark: refuse it here. Each
    named ablation but the MACs one (a target, not a switch) differs from the default."""
    from edgeprune.pruning import PruneConfig

    switches = bench.ABLATIONS[label]
    cfg = PruneConfig().replace(**switches)
    assert label.startswith("edgeprune: ")
    assert (cfg != PruneConfig()) == (not label.endswith("MACs cost"))
    row = bench.prune_config(SimpleNamespace(epochs=8, quick=False), 3, switches)
    assert row.seed == 3 and row.epochs == switches.get("epochs", 8)  # a switch's epochs win


@pytest.mark.parametrize("named, runs_on", [(None, []), ([], [2]), (["edgeprune: + distill 8"], [2, 0, 1])])
def test_named_ablations_run_on_every_seed_and_the_whole_matrix_on_the_first(named, runs_on):
    """One named ablation repeated over --seeds gives a mean and a spread in one invocation;
    a bare --ablations (every switch) stays on the first seed, as the matrix is hours long."""
    assert bench._ablation_seeds(SimpleNamespace(ablations=named, seeds=[2, 0, 1])) == runs_on


@pytest.mark.parametrize("step, n", [(0.025, 37), (0.0125, 73), (0.1, 10), (0.4, 4)])
def test_the_peer_ratio_grid_spans_005_to_095_in_the_step(step, n):
    grid = bench.ratio_grid(step)
    assert len(grid) == n and grid[0] == 0.05 and grid[-1] == 0.95
    assert list(grid) == sorted(set(grid))  # increasing, no ratio twice
    assert set(bench.ratio_grid(0.025)) <= set(bench.ratio_grid(0.0125))  # finer keeps every ratio


@pytest.mark.parametrize("bad", ["0", "-0.1", "0.5", "nan"])
def test_a_bad_ratio_step_is_refused_with_the_bad_value(bad, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--ratio-step", bad, "--out", "/nonexistent/never-written.json"])
    assert e.value.code == 2 and f"--ratio-step {float(bad)} is invalid" in capsys.readouterr().err


def test_the_holdout_sample_is_labelled_and_apart_from_every_split(tmp_path):
    """The larger sample each row is also scored on is fresh images: none is a test or val image."""
    from edgeprune.data.sources import SHAPES_SEEDS

    hold = bench._holdout(60, (32, 32), tmp_path)
    assert len(hold) == 60 and hold.labels_requested
    x, y = hold.get_batch(np.arange(60))
    assert set(y.tolist()) <= set(range(10)) and len(set(y.tolist())) > 1
    assert bench.HOLDOUT_SEED not in SHAPES_SEEDS.values()
    for split in ("test", "val"):
        other = bench.data.open(f"shapes:{split}", labels=True, size=32)
        seen = {img.numpy().tobytes() for img in other.get_batch(np.arange(len(other)))[0]}
        assert not seen & {img.numpy().tobytes() for img in x}


def test_timed_rows_carry_latency_test_and_holdout_top1_and_sizes(cx, tmp_path, monkeypatch):
    """What ``_time_together`` writes into a row, with the real ``_Ctx`` methods: the ratio
    from the rounds, top-1 on test and on the holdout sample, MACs and parameters."""
    from edgeprune.models.checkpoint import spec_of
    from edgeprune.train import evaluate

    hold = bench._holdout(40, (32, 32), tmp_path)
    spec = spec_of(cx.teacher)
    fake = object.__new__(bench._Ctx)
    fake.__dict__.update(name="resnet20", teacher=cx.teacher, spec=spec,
                         val=hold, test=hold, holdout=hold, base_art="baseline", t=None,
                         a=SimpleNamespace(rounds=3))
    monkeypatch.setattr(bench, "time_rounds",
                        lambda arts, t, rounds: ([1.0, 0.5], [[2.0, 1.0], [1.0, 0.4], [1.0, 0.5]]))
    row = {"model": "resnet20", "method": "m", "budget_ratio": 0.5, "seed": 0, "labels": False,
           "finetune_epochs": 0, "predicted_ms": 0.5, "wall_s": 1.0, "top1_before_finetune": None}
    (out,) = bench._time_together(fake, [(row, cx.teacher, "pruned")])
    assert out["round_ratios"] == [0.5, 0.4, 0.5] and out["measured_ratio"] == 0.5
    assert out["measured_ms"] == 0.5 and out["budget_ms"] == 0.5 * 1.0
    expect = evaluate(cx.teacher, hold, input_spec=spec.input).top1
    assert out["top1"] == out["top1_holdout"] == expect
    assert out["holdout_images"] == 40 and out["holdout_seed"] == bench.HOLDOUT_SEED
    assert out["val_images"] == 40  # what a row's top1_val was read on (2,000 before 10,000)
    assert out["params"] == sum(p.numel() for p in cx.teacher.parameters()) and out["macs"] > 0


def test_the_printed_ft_column_counts_distillation_after_removal_as_fine_tuning(capsys):
    cx = SimpleNamespace(name="resnet20", teacher=None, top1=lambda model, split: 0.9)
    row = {"method": "edgeprune: + distill 8", "labels": False, "finetune_epochs": 0,
           "distill_epochs": 8, "seed": 0, "budget_ratio": 0.5, "measured_ms": 0.5,
           "measured_ratio": 0.5, "predicted_ms": 0.5, "macs": 1e6, "params": 100,
           "top1": 0.9, "wall_s": 1.0}
    plain = {**row, "method": "edgeprune", "distill_epochs": 0}
    bench._print(cx, [row, plain], 1.0)
    lines = {ln.split("  ")[0]: ln for ln in capsys.readouterr().out.splitlines()}
    ft = lambda line: int(line[34:].split()[1])  # noqa: E731  (after the method and labels)
    assert ft(lines["edgeprune: + distill 8"]) == 8 and ft(lines["edgeprune"]) == 0


@pytest.mark.parametrize("bad, says", [
    ("resnet20", "--teacher 'resnet20' is invalid"),
    ("lenet=resnet20-digits", "--teacher 'lenet=resnet20-digits' is invalid"),
    ("resnet20=no-such-dir", "bench/baselines/no-such-dir/model.safetensors does not exist"),
    ("resnet20=resnet56-shapes", "holds a resnet56, not a resnet20"),
])
def test_a_bad_teacher_is_refused_with_the_bad_value(bad, says, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--models", "resnet20", "--teacher", bad])
    assert e.value.code == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("script", ["bench_pruning", "bench_paper_table"])
def test_rows_of_another_teacher_are_not_merged_into_a_file(tmp_path, capsys, script):
    """A file compares every row of a model with one teacher: rows of another teacher need
    another --out, and the file is left as it was (files from before --teacher had the
    default). Both benchmark scripts share the check."""
    main = bench.main if script == "bench_pruning" else __import__(script).main
    out = tmp_path / "pruning.json"
    out.write_text('{"rows": [], "baselines": {"resnet20": {"measured_ms": 1.0, "top1": 0.9}}}')
    before = out.read_bytes()
    with pytest.raises(SystemExit) as e:
        main(["--models", "resnet20", "--teacher", "resnet20=resnet20-digits", "--out", str(out)])
    assert e.value.code == 2
    assert "holds resnet20 rows of teacher resnet20-shapes" in capsys.readouterr().err
    assert out.read_bytes() == before


def _stub_prune(cx, monkeypatch, seen: dict, top1=None, **result):
    """``edgeprune.prune`` replaced by a stand-in that records the config it was given in
    ``seen`` and returns a result with ``result``'s fields (by default the teacher, nothing
    distilled); returns the row context for ``_edgeprune``, scoring with ``top1`` if given."""

    def prune(teacher, batches, *, target, profile, budget_ratio, config, on_progress):
        seen["config"] = config
        return SimpleNamespace(**{"model": teacher, "distill": None, "undistilled": None,
                                  "budget": 1.0, "internal_budget": 1.0, "cost_unit": "ms",
                                  "verify": [], "ramp_check": None, "history": [], "lr": 0.01, "lr_check": [],
                                  "to_dict": lambda: {"widths_before": {}, "widths_after": {}},
                                  "group_widths_after": {}, "student": 0, "removed_blocks": [],
                                  **result})

    monkeypatch.setattr(bench.edgeprune, "prune", prune)
    monkeypatch.setattr(bench.data, "Batches", lambda *a, **k: None)
    return _row_cx(cx, {"quick": False, "batch_size": 4}, train_unlabeled=None,
                   spec=SimpleNamespace(input=SimpleNamespace(mean=(0.5,), std=(0.5,))),
                   t=SimpleNamespace(name="host-litert"), **({"top1": top1} if top1 else {}))


@pytest.mark.parametrize("switches, importance", [({}, "global"), ({"importance": "group"}, "group")])
def test_an_edgeprune_row_records_the_whole_config_it_ran(cx, monkeypatch, switches, importance):
    """Defaults change (importance was "group" up to c492a42): a row says what it ran with,
    the config the pruner was given, not only the ablation's switches."""
    seen = {}
    fake = _stub_prune(cx, monkeypatch, seen)
    row, _, _ = bench._edgeprune(fake, 0.5, 1, switches, "edgeprune")
    assert row["config"] == seen["config"].to_dict()
    assert row["config"]["importance"] == importance and row["config"]["seed"] == 1
    assert row["switches"] == switches
    assert row["top1_val_before_distill"] is None


def test_an_edgeprune_row_records_the_rate_it_trained_at(cx, monkeypatch):
    """The learning-rate check may lower ``config.lr``: the row says which rate trained."""
    trials = [{"lr": 0.01, "heldout_kl_before": 0.0, "heldout_kl_after": 9.0}]
    fake = _stub_prune(cx, monkeypatch, {}, lr=0.001, lr_check=trials)
    row, _, _ = bench._edgeprune(fake, 0.5, 0, {}, "edgeprune")
    assert row["lr"] == 0.001 and row["config"]["lr"] == 0.01 and row["lr_check"] == trials


def test_a_distilled_row_records_val_top1_of_the_same_widths_before_distillation(cx, monkeypatch, capsys):
    """What distillation adds is judged on identical channels: the row scores the model the
    pruner returned before its distillation phase on val (a choice; test is read once)."""
    before, after = nn.Linear(1, 1), nn.Linear(1, 1)
    scored = []

    def top1(model, split):
        scored.append((model, split))
        return 0.9 if model is after else 0.8

    fake = _stub_prune(cx, monkeypatch, {}, top1=top1, model=after, distill={"epochs": 8},
                       undistilled=before)
    row, model, _ = bench._edgeprune(fake, 0.5, 0, {"distill_epochs": 8}, "edgeprune: + distill 8")
    assert model is after and row["top1_val"] == 0.9 and row["top1_val_before_distill"] == 0.8
    assert (before, "val") in scored and all(split == "val" for m, split in scored if m is before)
    assert "val 90.00% (80.00% before distillation)" in capsys.readouterr().out


def test_progress_lines_print_each_stage_start_each_phase_end_and_otherwise_every_interval():
    now, lines = [0.0], []
    tick = progress_lines("vgg 0.3", every_s=300, clock=lambda: now[0], out=lambda s, flush: lines.append(s))
    for t, step, total in [(1, 1, 100), (100, 2, 100), (299, 3, 100), (302, 4, 100), (400, 50, 50)]:
        now[0] = t
        tick(Progress("prune", step, total, {"ms": 0.41234, "sparsity": 0.5, "note": "text"}))
    now[0] = 401
    tick(Progress("distill", 1, 10, {}))
    assert lines == ["vgg 0.3: prune step 1/100 at 0.0 min (ms 0.4123, sparsity 0.5)",
                     "vgg 0.3: prune step 4/100 at 5.0 min (ms 0.4123, sparsity 0.5)",
                     "vgg 0.3: prune step 50/50 at 6.7 min (ms 0.4123, sparsity 0.5)",
                     "vgg 0.3: distill step 1/10 at 6.7 min"]
