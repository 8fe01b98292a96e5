"""edgeprune against Torch-Pruning at equal **measured** latency on host-litert.

For each committed ``shapes`` baseline (``bench/baselines/<model>-shapes``, or the directory
``--teacher`` names) and each budget (a fraction of the baseline's measured latency), every
method prunes the same teacher. One results file holds one teacher per model (recorded as the
baseline's ``teacher``); rows of another teacher go to another ``--out``.

- ``edgeprune``: the default config, no labels, no fine-tuning (its budget is the fraction of
  its profile's predicted baseline, which is the same fraction of the measured one while the
  profile's error is proportional);
- ``tp-l1``, ``tp-taylor``, ``tp-bnscale``: Torch-Pruning (GroupMagnitude p=1, GroupTaylor on
  labeled batches, BNScale), ``round_to`` from the target. Its global pruning is not monotonic
  in the ratio with ``round_to`` (a larger ratio can return a wider, even unpruned, model), so
  the ratio is searched on a grid, global and uniform per layer; every candidate's widths are
  checked (ratios that prune alike give one candidate) and its latency predicted; the
  least-pruned candidates predicted near the budget are measured side by side with the
  baseline in ``--rounds`` runs of the target's protocol, and the widest whose median
  per-run ratio to the baseline is at most ``--match`` x the budget is taken (default 1.03:
  within 3%; 1.0 holds the peer to the budget, as edgeprune's closed loop holds itself). It is then fine-tuned
  **with labels** for as many epochs as edgeprune trained (top-1 before fine-tuning is kept),
  at the learning rate that scores best on the validation split;
- ``tp-distill``: the Torch-Pruning criterion that scored best on validation, fine-tuned
  **without labels** by distillation from the teacher for the same epochs (what edgeprune's
  training adds over "prune, then distill");
- ``edgeprune widths, distilled``: edgeprune's own widths, cut from the teacher by L1 norm and
  distilled the same way (no labels): whether a gap to the peers is the allocation or the
  training;
- ``baseline, fine-tuned``: the control for the labeled peers, not a pruning method: the
  unpruned teacher fine-tuned with labels exactly as they are (one row per seed, at budget
  1.0). What it gains over the teacher is what further labeled training gives any model of
  this teacher, which a method that only learns from the teacher cannot get.

``--ablations`` adds edgeprune's switches at 0.5x (at every budget when --budgets is
given): all of them on the first seed, or those named on every one of ``--seeds``.
``--seeds`` repeats edgeprune and the best Torch-Pruning variant. Every choice is
made on the ``val`` split; the test split is read once per row, for the table. All
artifacts of one invocation are timed together, interleaved with the baseline, in
``--rounds`` rounds: a row's ms is the median of its round values, its ratio the median of
its per-round ratios to the baseline. Rows merge into
``bench/results/pruning.json`` by (model, method, budget, seed), so the matrix runs in parts.
At the end it prints, per model, the mean and range over seeds of every method and budget
the file holds on two seeds or more, per CPU (the report's "Across seeds" table).

    python scripts/bench_pruning.py [--models resnet20 ...] [--budgets 0.5 ...] [--quick]
        [--teacher resnet20=resnet20-shapes-e40]
        [--methods edgeprune tp-l1 ...] [--ablations [NAME ...]] [--seeds 0 1 2] [--epochs 8]
        [--report-dir docs/benchmarks]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _bench import ROOT, merge_rows, progress_lines, provenance, rows_with_host

import edgeprune
from edgeprune import data
from edgeprune._io import write_json
from edgeprune.errors import BudgetBelowFloorError, ProfileError
from edgeprune.graph.blocks import remove_blocks
from edgeprune.graph.groups import output_layers
from edgeprune.graph.layers import model_macs
from edgeprune.graph.surgery import shrink_to_widths
from edgeprune.profiling import LatencyProfile
from edgeprune.profiling.measurement import convert_for, time_rounds
from edgeprune.pruning import PruneConfig
from edgeprune.reporting import seed_table, trained_epochs, write_report
from edgeprune.targets import load_target
from edgeprune.train import TrainConfig, evaluate, train

BUDGETS = {"resnet20": (0.7, 0.5), "resnet56": (0.7, 0.5), "vgg_small": (0.5, 0.35, 0.25),
           "mobilenetv2": (0.5, 0.35, 0.25)}
TP_CRITERIA = ("l1", "taylor", "bnscale")
WIDTHS_DISTILL = "edgeprune widths, distilled"
TEACHER_FT = "baseline, fine-tuned"
METHODS = ("edgeprune", *(f"tp-{c}" for c in TP_CRITERIA), "tp-distill", WIDTHS_DISTILL, TEACHER_FT)
ABLATIONS = {  # edgeprune's switches, at 0.5x on the ResNets
    "edgeprune: no feature loss": {"feature_loss": False},
    "edgeprune: no mutual learning": {"mutual_learning": False},
    "edgeprune: one student": {"students": 1, "mutual_learning": False},
    "edgeprune: plain Taylor": {"latency_weighting": False},
    "edgeprune: static sparse set": {"dynamic_set": False},
    "edgeprune: MACs cost": {},  # pruned on the macs target instead of the latency table
    "edgeprune: + BN recalibration": {"bn_recalibration": 50},  # an option, kept if val says so
    "edgeprune: + block removal": {"remove_blocks": True},  # the default uses it only below the floor
    # one normaliser per channel group: the default up to commit c492a42 (2026-12-05), so rows
    # named "edgeprune" made at or before it are this; rows named "edgeprune: global
    # importance" in older results are today's default (each row's "config" says from now on)
    "edgeprune: group importance": {"importance": "group"},
    # schedule candidates (issue 16 item 7), judged on val: the distilled peers train their
    # final widths for all epochs at the learning rate val chose (0.05); edgeprune's widths are
    # final only after ramp_end (0.6) of a cosine from 0.01
    "edgeprune: lr 0.05": {"lr": 0.05},
    "edgeprune: early ramp": {"ramp_end": 0.3, "select_until": 0.45},
    "edgeprune: lr 0.05, early ramp": {"lr": 0.05, "ramp_end": 0.3, "select_until": 0.45},
    # nearest to "prune, then distill" that the method allows: the widths are final at 0.3 of
    # the run, and the rest trains them from lr 0.04 down
    "edgeprune: lr 0.05, fast ramp": {"lr": 0.05, "ramp_end": 0.15, "select_until": 0.3},
    # the closed loop's margin before 2026-12-05 (aim 3% under the budget, not 1%); rows
    # named "edgeprune: margin 0.01" in older results are today's default
    "edgeprune: margin 0.03": {"verify_margin": 0.03},
    # the closed loop only at the end (before 2026-12-04 every run was this)
    "edgeprune: no ramp check": {"verify_early": False},
    # a label-free distillation of the pruned model after removal (PruneConfig.distill_epochs):
    # on top of the default's epochs, and splitting the same 8 epochs between pruning and
    # distillation (the peers' budget of epochs)
    "edgeprune: + distill 8": {"distill_epochs": 8},
    # half the default's epochs (a VGG-Small paper-table row takes two hours at 8 on 2 cores)
    "edgeprune: 4 epochs": {"epochs": 4},
    "edgeprune: 4 + distill 4": {"epochs": 4, "distill_epochs": 4},
}
RATIO_STEP = 0.0125  # the peer's ratio grid (0.025 until 2026-12-05: on the 40-epoch ResNet-20
# teacher its 16 distinct models left none at or under 0.5x, nearest 0.502x)
MATCH = 1.03  # by default a peer's measured ratio may exceed the budget by at most 3% (--match)
MEASURE_AT_ONCE = 4  # candidates timed per side-by-side measurement
MEASURE_WITHIN = 1.15  # a peer candidate is measured if predicted at most this x the budget
HOLDOUT_SEED = 100  # shapes' splits are seeds 0 (train), 1 (test), 2 (val): a stream apart from all


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    ap.add_argument("--budgets", nargs="+", type=float, default=None,
                    help="fractions of the measured baseline (default: per model, see BUDGETS)")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS),
                    help="none given: only the --ablations")
    ap.add_argument("--ablations", nargs="*", default=None, choices=list(ABLATIONS), metavar="NAME",
                    help="edgeprune's switches at 0.5x (or at every --budgets given): all on the first seed, "
                         "or those named on every --seeds")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0],
                    help="seeds for edgeprune and the best Torch-Pruning variant (others: the first)")
    ap.add_argument("--epochs", type=int, default=8, help="edgeprune's epochs = the peers' fine-tuning")
    ap.add_argument("--ft-lrs", nargs="+", type=float, default=[0.01, 0.05],
                    help="peer fine-tuning learning rates, chosen on the val split")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None, help="train images (default: all 10,000)")
    ap.add_argument("--match", type=float, default=MATCH,
                    help="a peer's measured ratio may be at most this x the budget (1.0: held to "
                         "the budget, as edgeprune's closed loop is)")
    ap.add_argument("--ratio-step", type=float, default=RATIO_STEP,
                    help="step of the peer's pruning-ratio grid, 0.05 to 0.95 (finer: more "
                         "distinct models to choose from, a longer search)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training")
    ap.add_argument("--target", default="host-litert")
    ap.add_argument("--teacher", nargs="+", default=[], metavar="MODEL=DIR",
                    help="the teacher of MODEL: a directory under bench/baselines/ (default "
                         "MODEL-shapes), e.g. resnet20=resnet20-shapes-e40")
    ap.add_argument("--holdout", type=int, default=20000,
                    help="fresh shapes images (seed 100, apart from every split) each row is also "
                         "scored on; read, like test, for the final table only; 0: off")
    ap.add_argument("--quick", action="store_true",
                    help="resnet20 at 0.5x, 1 epoch on 2,000 images, one learning rate")
    ap.add_argument("--out", default=None, help="default bench/results/pruning.json (_quick)")
    ap.add_argument("--report-dir", default=None, help="write `edgeprune report` there at the end")
    a = ap.parse_args(argv)
    if a.quick:
        a.models, a.budgets = ["resnet20"], a.budgets or [0.5]
        a.epochs, a.limit, a.rounds, a.ft_lrs = 1, a.limit or 2000, min(a.rounds, 3), a.ft_lrs[:1]
        a.holdout = min(a.holdout, 2000)
    if a.holdout < 0:
        ap.error(f"--holdout {a.holdout} is invalid; give a number of images >= 0 (0: off)")
    if not a.match >= 1.0:  # below 1 would hold the peer under the budget, and NaN to nothing
        ap.error(f"--match {a.match} is invalid; give a factor >= 1.0 (1.0: at most the budget)")
    if not 0.001 <= a.ratio_step <= 0.45:  # NaN fails too
        ap.error(f"--ratio-step {a.ratio_step} is invalid; give a step in [0.001, 0.45], e.g. 0.0125")
    a.teachers = _teachers(ap, a.teacher, a.models)
    torch.set_num_threads(a.threads)
    t = load_target(a.target)
    out = Path(a.out) if a.out else ROOT / "bench" / "results" / f"pruning{'_quick' if a.quick else ''}.json"
    doc = _load(out)
    refuse_other_teacher(ap, doc, a, out)
    doc["rows"] = rows_with_host(doc)  # before the header names this host
    doc.update(provenance("pruning", "bench_pruning.py", argv))
    a.command, a.commit = doc["command"], _commit()  # the code this invocation runs
    doc["what"] = ("edgeprune (no labels, no fine-tuning) against Torch-Pruning (labels, fine-tuned "
                   f"as many epochs) at equal measured latency on {t.name}; top-1 on shapes:test")
    with tempfile.TemporaryDirectory(prefix="edgeprune-bench-pruning-") as d:
        for name in a.models:
            rows, base = _run_model(name, a, t, Path(d))
            doc.setdefault("baselines", {})[name] = base
            doc["rows"] = merge_rows(doc["rows"], rows, key=_row_key)
            write_json(out, doc)  # after each model: a long matrix keeps what it measured
    print(f"\nwrote {out}")
    for name in a.models:  # the file's rows of each model run (this invocation's and earlier)
        table = seed_table([r for r in doc["rows"] if r["model"] == name])
        if table:
            print(f"\n{name}" + "\n".join(table))
    if a.report_dir:
        print(f"wrote {write_report(out, a.report_dir)}")
    return 0


# ---- one model ----------------------------------------------------------------------------

class _Ctx:
    """What every method of one model shares: teacher, data splits, profile, artifacts."""

    def __init__(self, name: str, a, t, tmp: Path) -> None:
        self.teacher_dir = a.teachers[name]
        ckpt = ROOT / "bench" / "baselines" / self.teacher_dir / "model.safetensors"
        self.name, self.a, self.t, self.tmp = name, a, t, tmp
        self.teacher = edgeprune.load(ckpt)
        self.spec = self.teacher.edgeprune_spec
        hw, s = self.spec.input.hw, self.spec.input
        self.train_unlabeled = data.open("shapes:train", size=hw, limit=a.limit)
        self.train_labeled = data.open("shapes:train", labels=True, size=hw, limit=a.limit)
        self.val = data.open("shapes:val", labels=True, size=hw)
        self.test = data.open("shapes:test", labels=True, size=hw)
        self.holdout = _holdout(a.holdout, hw, tmp) if a.holdout else None
        self.example = torch.zeros(1, *s.shape)
        committed = ROOT / "profiles" / t.name / f"{self.spec.architecture}.json"
        try:
            self.profile = LatencyProfile.load(committed, target=t)
        except ProfileError as e:
            print(f"not using {committed.relative_to(ROOT)} ({str(e).split(';')[0]}); profiling now")
            self.profile = edgeprune.profile(self.teacher, target=t)
        self.round_to = t.round_to
        self.tp_pruned: dict = {}  # (criterion, budget, seed) -> the peer's model before fine-tuning
        self.base_art = self.artifact(self.teacher, "baseline")
        self.base_pred = self.profile.predict_ms(self.teacher)
        self.ran_on = f"CPU host ({torch.get_num_threads()} torch threads)"

    def artifact(self, model, tag: str) -> Path:
        return convert_for(model.eval(), self.t, self.tmp / f"{self.name}-{tag}.tflite", self.example)

    def top1(self, model, split: str) -> float:
        src = {"val": self.val, "test": self.test, "holdout": self.holdout}[split]
        return evaluate(model, src, input_spec=self.spec.input).top1

    def test_fields(self, model) -> dict:
        """Top-1 on the test split and, when on, on the larger holdout sample."""
        out = {"top1": self.top1(model, "test")}
        if self.holdout is not None:
            out.update(top1_holdout=self.top1(model, "holdout"), holdout_images=len(self.holdout),
                       holdout_seed=HOLDOUT_SEED)
        return out

    def sizes(self, model) -> dict:
        return {"macs": model_macs(model, tuple(self.spec.input.shape)), "params": int(sum(p.numel() for p in model.parameters()))}


def _holdout(n: int, hw: tuple[int, int], tmp: Path):
    """``n`` fresh shapes images with labels, from a seed no split uses. The 2,000-image
    splits give one model's top-1 a standard error near 0.5 points, and models that fail on
    the same kind of image share the luck of the draw; a large sample tells a family
    difference from the draw."""
    from edgeprune.data import shapes

    images, labels = shapes.generate(n, seed=HOLDOUT_SEED)
    path = tmp / "holdout.npz"
    np.savez(path, x=images, y=labels)
    return data.open(str(path), labels=True, size=hw)


def _run_model(name: str, a, t, tmp: Path) -> tuple[list[dict], dict]:
    cx = _Ctx(name, a, t, tmp)
    budgets = a.budgets or BUDGETS[name]
    pending = []  # (row, model, artifact): timed together at the end
    for r in budgets:
        tp_models = {}
        for seed in a.seeds:
            first = seed == a.seeds[0]
            if TEACHER_FT in a.methods and r == budgets[0]:  # one per seed, whatever the budgets
                pending.append(_teacher_finetuned(cx, seed))
            if "edgeprune" in a.methods:
                pending.append(_edgeprune(cx, r, seed, {}, "edgeprune"))
                if WIDTHS_DISTILL in a.methods and pending[-1][1] is not None:
                    pending.append(_widths_distill(cx, r, seed, pending[-1][0]))
            if seed in _ablation_seeds(a) and (r == 0.5 or a.budgets is not None):
                for label in a.ablations or ABLATIONS:
                    pending.append(_edgeprune(cx, r, seed, ABLATIONS[label], label))
            best = _best(tp_models)
            for c in TP_CRITERIA:
                if f"tp-{c}" in a.methods and (first or c == best):
                    item = _tp(cx, r, seed, c)
                    pending.append(item)
                    if first:
                        tp_models[c] = item
            if first and "tp-distill" in a.methods and _best(tp_models):
                pending.append(_tp_distill(cx, r, seed, _best(tp_models)))
    rows = _time_together(cx, pending)
    base = {"teacher": cx.teacher_dir, "measured_ms": statistics.median(cx.base_rounds),
            "predicted_ms": cx.base_pred,
            **cx.test_fields(cx.teacher), "top1_val": cx.top1(cx.teacher, "val"),
            "val_images": len(cx.val), **cx.sizes(cx.teacher)}
    return rows, base


def _ablation_seeds(a) -> list[int]:
    """The seeds the ablations run on: none without ``--ablations``; the first seed for all
    of them (a bare ``--ablations``, the whole matrix); every seed for those named, which is
    how one ablation is repeated into a mean and a spread."""
    if a.ablations is None:
        return []
    return list(a.seeds) if a.ablations else list(a.seeds[:1])


def _best(tp_models: dict) -> str | None:
    """The Torch-Pruning criterion with the best val top-1 after fine-tuning."""
    ok = {c: it[0] for c, it in tp_models.items() if "infeasible" not in it[0]}
    return max(ok, key=lambda c: ok[c]["top1_val"]) if ok else None


def _row(cx: _Ctx, method: str, r: float, seed: int, **kw) -> dict:
    # rows of several invocations (and code versions) merge into one file: each names its own
    return {"model": cx.name, "method": method, "budget_ratio": r, "seed": seed,
            "ran_on": cx.ran_on, "command": cx.a.command, "commit": cx.a.commit, **kw}


def _commit() -> str:
    """The code a row was produced by: the git commit, with "+dirty" for uncommitted changes."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


# ---- edgeprune ----------------------------------------------------------------------------

def prune_config(a, seed: int, switches: dict) -> PruneConfig:
    """edgeprune's config for a row: the default at ``--epochs`` and ``seed``, then the
    ablation's switches (which may set their own epochs)."""
    cfg = PruneConfig().replace(**{"epochs": a.epochs, "seed": seed, **switches})
    if a.quick:
        cfg = cfg.replace(update_interval=5)  # ~30 steps: re-choose the sparse set often enough
    return cfg


def _edgeprune(cx: _Ctx, r: float, seed: int, switches: dict, label: str):
    a = cx.a
    cfg = prune_config(a, seed, switches)
    batches = data.Batches(cx.train_unlabeled, a.batch_size, mean=cx.spec.input.mean,
                           std=cx.spec.input.std, augment=True, fixed_batches=cfg.heldout_batches,
                           seed=seed)
    macs = label.endswith("MACs cost")
    t0 = time.perf_counter()
    try:
        res = edgeprune.prune(cx.teacher, batches, target="macs" if macs else cx.t,
                              profile=None if macs else cx.profile, budget_ratio=r, config=cfg,
                              on_progress=progress_lines(f"{cx.name} {label} {r}x seed {seed}"))
    except BudgetBelowFloorError as e:  # below the floor: a row that says so, and the run goes on
        print(f"{cx.name} {label} {r}x: infeasible: {e}", flush=True)
        return _row(cx, label, r, seed, labels=False, finetune_epochs=0, infeasible=str(e)), None, None
    wall = time.perf_counter() - t0
    row = _row(cx, label, r, seed, labels=False, finetune_epochs=0, train_epochs=cfg.epochs,
               distill_epochs=cfg.distill_epochs, distill=res.distill,
               switches=switches, config=cfg.to_dict(), wall_s=round(wall, 1),
               lr=res.lr, lr_check=list(res.lr_check),  # the rate trained at: the check may lower config.lr
               top1_val=cx.top1(res.model, "val"),
               # the same widths before the distillation phase: what it added (val only: a choice)
               top1_val_before_distill=None if res.undistilled is None else cx.top1(res.undistilled, "val"),
               top1_before_finetune=None, predicted_ms=cx.profile.predict_ms(res.model),
               pruner_budget=res.budget, pruner_internal_budget=res.internal_budget,
               pruner_cost_unit=res.cost_unit, verify=list(res.verify),
               ramp_check=res.ramp_check,
               cost_target="macs" if macs else cx.t.name,
               history=list(res.history), widths_before=res.to_dict()["widths_before"],
               widths_after=res.to_dict()["widths_after"],
               group_widths_after=res.group_widths_after, student=res.student,
               removed_blocks=list(res.removed_blocks))
    before = row["top1_val_before_distill"]
    print(f"{cx.name} {label} {r}x seed {seed}: val {100 * row['top1_val']:.2f}%"
          + ("" if before is None else f" ({100 * before:.2f}% before distillation)") + f" in {wall:.0f} s",
          flush=True)
    return row, res.model, cx.artifact(res.model, f"{label}-{r}-{seed}".replace(" ", "_").replace(":", ""))


# ---- Torch-Pruning ------------------------------------------------------------------------

def _tp_prune(cx: _Ctx, criterion: str, ratio: float, global_: bool, batch):
    import torch_pruning as tp

    m = copy.deepcopy(cx.teacher)
    for p in m.parameters():
        p.requires_grad_(True)
    imp = {"l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
           "taylor": tp.importance.GroupTaylorImportance,
           "bnscale": tp.importance.BNScaleImportance}[criterion]()
    pruner = tp.pruner.MetaPruner(m, cx.example, importance=imp, global_pruning=global_,
                                  pruning_ratio=ratio, ignored_layers=output_layers(m, cx.example),
                                  round_to=cx.round_to)
    if criterion == "taylor":  # Taylor needs gradients: the labeled peer uses labels
        m.eval()
        m.zero_grad()
        F.cross_entropy(m(batch[0]), batch[1]).backward()
    pruner.step()
    m.zero_grad(set_to_none=True)
    return m.eval()


def _tp_search(cx: _Ctx, criterion: str, r: float):
    """The widest Torch-Pruning model whose measured latency is at most ``--match`` x ``r`` x
    the baseline's (measured side by side). Returns (model, search record) or (None, record)."""
    x, y = next(iter(data.batches(cx.train_labeled, 128, mean=cx.spec.input.mean,
                                  std=cx.spec.input.std)))
    base = _widths(cx.teacher)
    cands, seen = [], set()
    for global_ in (True, False):
        for ratio in ratio_grid(cx.a.ratio_step):
            m = _tp_prune(cx, criterion, ratio, global_, (x, y))
            w = _widths(m)
            if w == base or w in seen:  # the trap (every channel kept), or a model already listed
                continue
            seen.add(w)
            cands.append({"model": m, "ratio": ratio, "global": global_,
                          "params": sum(p.numel() for p in m.parameters()),
                          "predicted_ratio": cx.profile.predict_ms(m) / cx.base_pred})
    near = sorted((c for c in cands if c["predicted_ratio"] <= r * MEASURE_WITHIN),
                  key=lambda c: -c["predicted_ratio"])
    measured = []
    for i in range(0, len(near), MEASURE_AT_ONCE):
        chunk = near[i:i + MEASURE_AT_ONCE]
        arts = [cx.artifact(c["model"], f"tp-{criterion}-cand{i + k}") for k, c in enumerate(chunk)]
        ratios = _round_ratios(cx, arts)
        for c, rr in zip(chunk, ratios, strict=True):
            c["round_ratios"] = rr
            c["measured_ratio"] = statistics.median(rr)
            measured.append(c)
        ok = [c for c in measured if c["measured_ratio"] <= r * cx.a.match]
        if ok:
            best = max(ok, key=lambda c: c["measured_ratio"])
            return best, _search_record(cands, measured, best, cx.a)
    return None, _search_record(cands, measured, None, cx.a)


def _widths(model) -> tuple:
    """A model's architecture as its parameter shapes: equal for two ratios that prune alike."""
    return tuple(tuple(p.shape) for p in model.parameters())


def _round_ratios(cx: _Ctx, arts: list[Path]) -> list[list[float]]:
    """Each artifact's latency over the baseline's, per round: ``rounds`` runs of the target's
    protocol, the baseline timed in every run. A ratio is taken within one run (both saw the
    same state of the machine), and something acts on the median of them: one run of the
    protocol is not enough on a shared VM (docs/profiles.md, "How many passes")."""
    _, per_round = time_rounds([cx.base_art, *arts], cx.t, cx.a.rounds)
    return [[rnd[k] / rnd[0] for rnd in per_round] for k in range(1, len(arts) + 1)]


def ratio_grid(step: float) -> tuple[float, ...]:
    """The peer's pruning ratios: 0.05 to 0.95 in ``step``s (both ends kept)."""
    n = int(round(0.9 / step))
    return tuple(sorted({round(min(0.05 + k * step, 0.95), 4) for k in range(n + 1)} | {0.95}))


def _search_record(cands, measured, best, a) -> dict:
    keep = ("ratio", "global", "params", "predicted_ratio", "measured_ratio", "round_ratios")
    lowest = min(cands, key=lambda c: c["predicted_ratio"], default=None)
    return {"candidates": len(cands), "match": a.match, "ratio_step": a.ratio_step, "measured": [{k: c.get(k) for k in keep} for c in measured],
            "chosen": {k: best.get(k) for k in keep} if best else None,
            "lowest_predicted": {k: lowest.get(k) for k in keep} if lowest else None}


def _tp(cx: _Ctx, r: float, seed: int, criterion: str):
    t0 = time.perf_counter()
    best, search = _tp_search(cx, criterion, r)
    method = f"tp-{criterion}"
    if best is None:
        why = (f"no Torch-Pruning ({criterion}) candidate of {search['candidates']} measured within "
               f"{cx.a.match:.2f} x {r} of the baseline")
        # the nearest it has, so the reader sees how far off the peer is
        if search["measured"]:
            near = min(search["measured"], key=lambda c: c["measured_ratio"])
            why += f" (nearest: {near['measured_ratio']:.3f}x, {near['params']:,} params)"
        elif search["lowest_predicted"]:
            low = search["lowest_predicted"]
            why += (f" (none was predicted within {MEASURE_WITHIN} x {r}, so none was measured; "
                    f"lowest predicted: {low['predicted_ratio']:.3f}x, {low['params']:,} params)")
        print(f"{cx.name} {method} {r}x: infeasible: {why}", flush=True)
        return _row(cx, method, r, seed, labels=True, finetune_epochs=cx.a.epochs, infeasible=why,
                    search=search), None, None
    search_s = time.perf_counter() - t0
    pruned = best["model"]
    cx.tp_pruned[(criterion, r, seed)] = (pruned, search, best)
    ft, lr = _finetune(cx, pruned, seed, teacher=None)
    wall = time.perf_counter() - t0
    row = _row(cx, method, r, seed, labels=True, finetune_epochs=cx.a.epochs, finetune_lr=lr,
               top1_before_finetune=cx.top1(pruned, "test"), top1_val=cx.top1(ft, "val"),
               predicted_ms=cx.profile.predict_ms(ft), search=search, search_s=round(search_s, 1),
               wall_s=round(wall, 1), tp_ratio=best["ratio"], tp_global=best["global"])
    print(f"{cx.name} {method} {r}x seed {seed}: ratio {best['ratio']} "
          f"{'global' if best['global'] else 'uniform'}, val {100 * row['top1_val']:.2f}% in {wall:.0f} s",
          flush=True)
    return row, ft, cx.artifact(ft, f"{method}-{r}-{seed}")


def _tp_distill(cx: _Ctx, r: float, seed: int, criterion: str):
    """The same Torch-Pruning model as the labeled row, fine-tuned by distillation instead."""
    pruned, search, best = cx.tp_pruned[(criterion, r, seed)]
    t0 = time.perf_counter()
    ft, lr = _finetune(cx, pruned, seed, teacher=cx.teacher)
    wall = time.perf_counter() - t0
    row = _row(cx, "tp-distill", r, seed, labels=False, finetune_epochs=cx.a.epochs,
               finetune_lr=lr, criterion=criterion, top1_before_finetune=cx.top1(pruned, "test"),
               top1_val=cx.top1(ft, "val"), predicted_ms=cx.profile.predict_ms(ft), search=search,
               wall_s=round(wall, 1), tp_ratio=best["ratio"], tp_global=best["global"])
    print(f"{cx.name} tp-distill ({criterion}) {r}x seed {seed}: val {100 * row['top1_val']:.2f}%",
          flush=True)
    return row, ft, cx.artifact(ft, f"tp-distill-{r}-{seed}")


def _widths_distill(cx: _Ctx, r: float, seed: int, ep_row: dict):
    """edgeprune's architecture (its removed blocks and group widths) cut from the teacher by
    the L1 norm of each group's root weights, then distilled like ``tp-distill``: the same
    widths as edgeprune with "prune, then distill" instead of edgeprune's training, so the
    pair of rows separates what the allocation gives from what the training gives."""
    t0 = time.perf_counter()
    pruned = remove_blocks(cx.teacher, ep_row["removed_blocks"])
    pruned = shrink_to_widths(pruned, cx.example, ep_row["group_widths_after"])
    ft, lr = _finetune(cx, pruned, seed, teacher=cx.teacher)
    wall = time.perf_counter() - t0
    row = _row(cx, WIDTHS_DISTILL, r, seed, labels=False, finetune_epochs=cx.a.epochs,
               finetune_lr=lr, top1_before_finetune=cx.top1(pruned, "test"),
               top1_val=cx.top1(ft, "val"), predicted_ms=cx.profile.predict_ms(ft),
               group_widths_after=dict(ep_row["group_widths_after"]),
               removed_blocks=list(ep_row["removed_blocks"]), wall_s=round(wall, 1))
    print(f"{cx.name} {WIDTHS_DISTILL} {r}x seed {seed}: val {100 * row['top1_val']:.2f}%", flush=True)
    return row, ft, cx.artifact(ft, f"widths-distill-{r}-{seed}")


def _teacher_finetuned(cx: _Ctx, seed: int):
    """The control for the labeled peers: the unpruned teacher fine-tuned with labels exactly
    as they are (same epochs, same learning rates, val picks). A teacher that had not
    converged gains from it, and a peer fine-tuned with labels inherits that gain, which a
    label-free method that learns from the teacher cannot; this row measures how much."""
    t0 = time.perf_counter()
    ft, lr = _finetune(cx, copy.deepcopy(cx.teacher), seed, teacher=None)
    wall = time.perf_counter() - t0
    row = _row(cx, TEACHER_FT, 1.0, seed, labels=True, finetune_epochs=cx.a.epochs, finetune_lr=lr,
               top1_val=cx.top1(ft, "val"), predicted_ms=cx.profile.predict_ms(ft),
               wall_s=round(wall, 1))
    print(f"{cx.name} {TEACHER_FT} seed {seed}: val {100 * row['top1_val']:.2f}% in {wall:.0f} s",
          flush=True)
    return row, ft, cx.artifact(ft, f"teacher-ft-{seed}")


def _finetune(cx: _Ctx, model, seed: int, teacher):
    """Fine-tune at each ``--ft-lrs`` rate; keep the one with the best val top-1."""
    src = cx.train_unlabeled if teacher is not None else cx.train_labeled
    best = None
    for lr in cx.a.ft_lrs:
        cfg = TrainConfig(epochs=cx.a.epochs, batch_size=cx.a.batch_size, lr=lr, seed=seed)
        m = train(model, src, input_spec=cx.spec.input, config=cfg, teacher=teacher).model
        v = cx.top1(m, "val")
        if best is None or v > best[0]:
            best = (v, m, lr)
    return best[1], best[2]


# ---- timing and rows ----------------------------------------------------------------------

def _time_together(cx: _Ctx, pending: list) -> list[dict]:
    """Time the baseline and every pruned artifact in ``rounds`` interleaved rounds; fill the
    rows' measured latency (median of rounds), ratio to the baseline, sizes and test top-1."""
    live = [(row, m, art) for row, m, art in pending if art is not None]
    arts = [cx.base_art, *[art for _, _, art in live]]
    medians, per_round = time_rounds(arts, cx.t, cx.a.rounds)
    cx.base_rounds = [rnd[0] for rnd in per_round]
    base_ms = medians[0]
    for i, (row, m, _) in enumerate(live, start=1):
        ratios = [rnd[i] / rnd[0] for rnd in per_round]  # side by side: within one round
        row.update({"budget_ms": row["budget_ratio"] * base_ms, "baseline_ms": base_ms,
                    "measured_ms": medians[i], "measured_ratio": statistics.median(ratios),
                    "round_ms": [rnd[i] for rnd in per_round], "round_ratios": ratios,
                    "val_images": len(cx.val), **cx.test_fields(m), **cx.sizes(m)})
    for row, _, _ in pending:
        row.setdefault("budget_ms", row["budget_ratio"] * base_ms)
    _print(cx, [row for row, _, _ in pending], base_ms)
    return [row for row, _, _ in pending]


def _print(cx: _Ctx, rows: list[dict], base_ms: float) -> None:
    print(f"\n{cx.name}: baseline {base_ms:.3f} ms measured, top-1 {100 * cx.top1(cx.teacher, 'test'):.2f}%")
    print(f"{'method':34} {'labels':>6} {'ft':>3} {'seed':>4} {'budget':>6} {'meas ms':>8} "
          f"{'ratio':>6} {'pred ms':>8} {'MMACs':>7} {'params':>8} {'top-1':>7} {'holdout':>7} "
          f"{'pre-ft':>7} {'s':>6}")
    for r in rows:
        if "infeasible" in r:
            print(f"{r['method']:34} infeasible at {r['budget_ratio']}x: {r['infeasible']}")
            continue
        ft = trained_epochs(r)  # distillation after removal counts: fine-tuning without labels
        print(f"{r['method']:34} {str(r['labels']):>6} {ft:3d} {r['seed']:4d} "
              f"{r['budget_ratio']:6.2f} {r['measured_ms']:8.3f} {r['measured_ratio']:6.3f} "
              f"{r['predicted_ms']:8.3f} {r['macs'] / 1e6:7.2f} {r['params']:8,} "
              f"{100 * r['top1']:6.2f}% {_pct(r.get('top1_holdout'))} "
              f"{_pct(r.get('top1_before_finetune'))} {r['wall_s']:6.0f}", flush=True)


def _pct(v: float | None) -> str:
    return f"{100 * v:6.2f}%" if v is not None else "      -"


def _teachers(ap, given: list[str], models: list[str]) -> dict[str, str]:
    """MODEL -> the directory under bench/baselines/ whose checkpoint is its teacher."""
    out = {m: f"{m}-shapes" for m in models}
    for item in given:
        model, sep, d = item.partition("=")
        if not sep or model not in BUDGETS or not d:
            ap.error(f"--teacher {item!r} is invalid; give MODEL=DIR with MODEL one of "
                     f"{', '.join(BUDGETS)}, e.g. resnet20=resnet20-shapes-e40")
        ckpt = ROOT / "bench" / "baselines" / d / "model.safetensors"
        if not ckpt.is_file():
            ap.error(f"--teacher {item}: bench/baselines/{d}/model.safetensors does not exist; "
                     "give a directory under bench/baselines/ that holds a checkpoint")
        arch = edgeprune.load(ckpt).edgeprune_spec.architecture
        if arch != model:
            ap.error(f"--teacher {item}: bench/baselines/{d} holds a {arch}, not a {model}; "
                     f"give a {model} checkpoint")
        out[model] = d
    return out


def refuse_other_teacher(ap, doc: dict, a, out: Path) -> None:
    """One results file, one teacher per model: rows of another ``--teacher`` need another
    ``--out`` (files from before ``--teacher`` held the default, MODEL-shapes)."""
    for name, b in doc.get("baselines", {}).items():
        had = b.get("teacher", f"{name}-shapes")
        if name in a.models and had != a.teachers[name]:
            ap.error(f"--teacher {name}={a.teachers[name]}: {out} holds {name} rows of teacher "
                     f"{had}; give another --out for this teacher's rows")


def _load(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.exists() else {}


def _row_key(r: dict) -> tuple:
    return r["model"], r["method"], r["budget_ratio"], r["seed"]


if __name__ == "__main__":
    raise SystemExit(main())
