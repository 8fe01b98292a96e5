"""The label-free multi-student pruner of METHOD.md, toward a latency (or MACs) budget.

A frozen teacher (the caller's model) supervises N student copies through its predictions
(KD) and attention maps of intermediate features (AT); the students also learn from each
other (mutual learning). Each step, after the optimiser step on that smooth loss, a group
soft-threshold (the ISTA proximal step) shrinks the gates of the channels in each student's
expected-sparse set E_t. E_t is re-chosen every ``update_interval`` steps: the keep-set that
maximises latency-weighted Taylor sensitivity under the ramped budget B_t. At the end the
best student (lowest KL to the teacher on held-out batches) has every channel of E_t
exactly zero; those channels are physically removed, which is lossless. Nothing is
fine-tuned afterwards and no label is read.

Deviations from METHOD.md, and why:
- Student views: identical copies of the teacher fed identical batches get identical
  gradients, so mutual learning would be a no-op and the students would never differ.
  Student k >= 1 therefore sees its own random shift (reflect-padded crop, up to 2 pixels) of
  each batch; the teacher is run on every view. Mutual learning then asks the students to
  agree across views of the same images (a consistency term, in the spirit of DML).
- The set E_t chosen at a check is priced against the budget of the *next* check, so ISTA has
  one interval to zero it before the ramp gets there.
- lambda_s starts at (median gate norm) / (lr * update_interval), so a median gate would be
  thresholded to zero within one interval if the gradient did not push back, and grows by
  ``lambda_growth`` at every check where a student's exactly-zero channels do not yet meet
  the ramped budget. After the ramp it is also raised, if needed, so that the thresholds
  still to come (the cosine learning rate decays to zero) add up to twice the largest gate
  norm left in E_t: E_t reaches zero by shrinkage rather than by the final hard-zeroing.
- E_t is frozen after ``select_until`` of training so that the last entrants reach exact
  zero by shrinkage, not by the final hard-zeroing (whose largest norm is reported).
- With ``dynamic_set=False`` E is chosen once, at the first check, against the final budget.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.channels import PruningStructureError, remove_channels
from edgeprune.data import input_of
from edgeprune.errors import ConfigError, DataError, EdgepruneError
from edgeprune.prune.config import PruneConfig
from edgeprune.prune.cost import Cost
from edgeprune.prune.gates import GroupGates
from edgeprune.prune.ista import group_soft_threshold
from edgeprune.prune.losses import attention_loss, kd_loss, mutual_loss
from edgeprune.prune.select import select_channels, width_floor
from edgeprune.prune.structure import GroupStructure, WidthMap, group_structure
from edgeprune.types import Progress

log = logging.getLogger(__name__)

LOSSLESS_TOL = 1e-4  # max abs logit difference allowed between masked and removed models


@dataclass(frozen=True)
class PruneResult:
    """What :func:`edgeprune.prune` returns. Costs are in ``cost_unit``: "ms" predicted on
    the target from its latency profile, or "MMACs" for the analytical ``macs`` target (the
    ``*_ms`` fields then hold millions of MACs)."""

    model: nn.Module
    target: str
    cost_unit: str
    cost_source: str
    baseline_predicted_ms: float
    predicted_ms: float
    budget_ms: float
    group_widths_before: dict[str, int]
    group_widths_after: dict[str, int]
    widths_before: dict[str, tuple[int, int]]
    widths_after: dict[str, tuple[int, int]]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    student: int
    student_kl: tuple[float, ...]
    removal_max_abs_diff: float
    max_hard_zeroed_norm: float
    history: tuple[dict[str, Any], ...]
    config: PruneConfig
    steps: int
    seconds: float
    notes: tuple[str, ...] = field(default=())

    @property
    def speedup(self) -> float:
        return self.baseline_predicted_ms / self.predicted_ms

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, JSON-ready."""
        return {
            "target": self.target, "cost_unit": self.cost_unit, "cost_source": self.cost_source,
            "baseline_predicted": self.baseline_predicted_ms, "predicted": self.predicted_ms,
            "budget": self.budget_ms,
            "group_widths_before": self.group_widths_before,
            "group_widths_after": self.group_widths_after,
            "widths_before": {k: list(v) for k, v in self.widths_before.items()},
            "widths_after": {k: list(v) for k, v in self.widths_after.items()},
            "macs_before": self.macs_before, "macs_after": self.macs_after,
            "params_before": self.params_before, "params_after": self.params_after,
            "student": self.student, "student_kl": list(self.student_kl),
            "removal_max_abs_diff": self.removal_max_abs_diff,
            "max_hard_zeroed_norm": self.max_hard_zeroed_norm,
            "steps": self.steps, "seconds": self.seconds,
            "config": self.config.to_dict(), "notes": list(self.notes),
            "history": list(self.history),
        }

    def __str__(self) -> str:
        u = self.cost_unit
        lines = [
            f"pruned for {self.target}: {self.baseline_predicted_ms:.4g} -> {self.predicted_ms:.4g} {u} "
            f"predicted (budget {self.budget_ms:.4g} {u}, {self.speedup:.2f}x)",
            f"params {self.params_before:,} -> {self.params_after:,}   "
            f"MACs {self.macs_before / 1e6:.2f}M -> {self.macs_after / 1e6:.2f}M",
            f"student {self.student} (KL to teacher {', '.join(f'{k:.4f}' for k in self.student_kl)}), "
            f"removal max |dlogit| {self.removal_max_abs_diff:.2e}, largest hard-zeroed gate "
            f"{self.max_hard_zeroed_norm:.2e}, {self.steps} steps in {self.seconds:.0f} s",
            "",
            f"{'group (root layer)':32} {'before':>6} {'after':>6}",
        ]
        for g, w in self.group_widths_before.items():
            lines.append(f"{g:32} {w:6d} {self.group_widths_after[g]:6d}")
        return "\n".join(lines)


# ---- data -------------------------------------------------------------------------------

def _check_reiterable(data: Iterable) -> None:
    if iter(data) is data:
        raise DataError("pruning data is a one-shot iterator; pass something that can be iterated "
                        "once per epoch (a list of batches, a DataLoader, or a callable's result "
                        "wrapped in a list)")


# ---- features ---------------------------------------------------------------------------

def stage_outputs(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Default feature points: among modules at depth <= 2, the last one to produce each
    spatial resolution (> 1x1) of 4-D output, in execution order (a ResNet's layer1..3)."""
    done: list[tuple[str, tuple[int, int]]] = []
    hooks = []
    for name, m in model.named_modules():
        if name and name.count(".") <= 1:
            hooks.append(m.register_forward_hook(
                lambda mod, i, o, name=name: done.append((name, tuple(o.shape[2:])))
                if isinstance(o, torch.Tensor) and o.dim() == 4 else None))
    try:
        was = model.training
        model.eval()
        with torch.no_grad():
            model(example)
        model.train(was)
    finally:
        for h in hooks:
            h.remove()
    last: dict[tuple[int, int], str] = {}
    for name, hw in done:
        if hw[0] * hw[1] > 1:
            last.pop(hw, None)  # re-insert: dict order = order of each resolution's last output
            last[hw] = name
    return list(last.values())


class _Features:
    """Forward hooks that keep the outputs of the feature points of one model."""

    def __init__(self, model: nn.Module, points: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        missing = [p for p in points if p not in modules]
        if missing:
            raise ConfigError(f"feature point(s) {missing} are not modules of the model; give module "
                              f"paths such as {[n for n, _ in list(model.named_children())[:4]]}")
        self.out: dict[str, torch.Tensor] = {}
        self.points = list(points)
        self.hooks = [modules[p].register_forward_hook(
            lambda mod, i, o, p=p: self.out.__setitem__(p, o)) for p in points]

    def take(self) -> list[torch.Tensor]:
        feats = [self.out[p] for p in self.points]
        self.out = {}
        return feats

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


# ---- schedules --------------------------------------------------------------------------

def ramp_budget(step: int, ramp_steps: int, start: float, end: float, kind: str) -> float:
    """B_t: from ``start`` (the baseline) to ``end`` (the budget) over ``ramp_steps``."""
    f = min(1.0, step / max(1, ramp_steps))
    if kind == "cubic":  # fast early, gentle near the budget (Zhu & Gupta's gradual pruning)
        return end + (start - end) * (1 - f) ** 3
    if kind == "exponential":
        return start * (end / start) ** f
    return start + (end - start) * f


def _shift_view(x: torch.Tensor, g: torch.Generator, pad: int = 2) -> torch.Tensor:
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = int(torch.randint(0, 2 * pad + 1, (1,), generator=g))
    dx = int(torch.randint(0, 2 * pad + 1, (1,), generator=g))
    return xp[:, :, dy:dy + h, dx:dx + w]


# ---- one student ------------------------------------------------------------------------

class _Student:
    def __init__(self, model: nn.Module, groups: list[GroupStructure], cfg: PruneConfig) -> None:
        self.model = model
        self.gates = [GroupGates(model, g) for g in groups]
        self.opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
        self.sens = [np.zeros(g.width) for g in groups]
        self.seen = 0
        self.sparse: list[np.ndarray] = [np.zeros(0, dtype=np.int64) for _ in groups]
        self.lambda_s = 0.0

    def update_sensitivity(self, rho: float) -> None:
        for i, gg in enumerate(self.gates):
            s = gg.taylor()
            self.sens[i] = s if self.seen == 0 else rho * self.sens[i] + (1 - rho) * s
        self.seen += 1

    def normalised_sensitivity(self) -> list[np.ndarray]:
        """Per-group normalisation (mean 1 in each group), so layers of different gradient
        scale compare (Molchanov et al. normalise per layer)."""
        return [s / max(float(s.mean()), 1e-30) for s in self.sens]

    @torch.no_grad()
    def ista(self, threshold: float) -> None:
        for gg, e in zip(self.gates, self.sparse, strict=True):
            if len(e):
                rows = torch.as_tensor(e)
                gm = gg.matrix()[rows]
                gg.write(rows, group_soft_threshold(gm, threshold))

    def max_sparse_norm(self) -> float:
        return max((float(gg.matrix()[torch.as_tensor(e)].norm(dim=1).max())
                    for gg, e in zip(self.gates, self.sparse, strict=True) if len(e)), default=0.0)

    def zero_counts(self) -> list[int]:
        return [int((gg.norms() == 0).sum()) for gg in self.gates]


# ---- the loop ---------------------------------------------------------------------------

def run(model: nn.Module, data: Iterable, *, cost: Cost, budget: float, target: str,
        round_to: int, config: PruneConfig = PruneConfig(),
        on_progress: Callable[[Progress], None] | None = None) -> PruneResult:
    """Prune ``model`` (not modified) on unlabeled ``data`` until ``cost`` <= ``budget``.

    Pure torch: ``cost`` prices layer widths (a latency profile's prediction or MACs). Under
    ``torch.distributed`` (e.g. ``torchrun``), every rank must see the same batches; each
    takes its slice of every batch and gradients are averaged across ranks.
    """
    cfg = config
    t_start = time.perf_counter()
    _check_reiterable(data)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device!r} is not available here (no CUDA); use device='cpu'")
    dist_on = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if dist_on else 0
    world = torch.distributed.get_world_size() if dist_on else 1

    # held-out batches (the first ones of every pass; never trained on)
    heldout: list[torch.Tensor] = []
    it = iter(data)
    for batch in it:
        heldout.append(input_of(batch).detach().clone())
        if len(heldout) == cfg.heldout_batches:
            break
    n_batches = len(data) if hasattr(data, "__len__") else len(heldout) + sum(1 for _ in it)
    train_batches = n_batches - cfg.heldout_batches
    if train_batches < 1:
        raise DataError(f"pruning data has {n_batches} batch(es); need more than "
                        f"heldout_batches={cfg.heldout_batches} (the first ones are held out "
                        "to pick the best student)")
    total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * train_batches
    example = heldout[0][:1].to(device)

    torch.manual_seed(cfg.seed)
    teacher = copy.deepcopy(model).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    groups = group_structure(teacher, example)
    if not groups:
        raise PruningStructureError("the model has no prunable channel group (no conv/linear whose "
                                    "output channels feed another layer)")
    widthmap = WidthMap(teacher, groups)
    names = [g.name for g in groups]
    full = {g.name: g.width for g in groups}

    def cost_of(gw: dict[str, int]) -> float:
        return cost(widthmap(gw))

    baseline = cost_of(full)
    min_width = cfg.min_width or round_to
    smallest = cost_of(width_floor(full, round_to=round_to, min_width=min_width))
    if budget < smallest:
        raise ConfigError(
            f"budget {budget:.4g} {cost.unit} is below the smallest reachable {smallest:.4g} {cost.unit} "
            f"({smallest / baseline:.3f}x of the baseline's {baseline:.4g} {cost.unit}, every group at "
            f"{max(min_width, round_to)} channels: round_to {round_to}, min_width {min_width}); raise the "
            f"budget to at least {smallest:.4g}, or lower round_to and min_width (CLI: --round-to N "
            "--min-width N), at the price of widths the runtime may run no faster")

    points = list(cfg.feature_points) if cfg.feature_points is not None else stage_outputs(teacher, example)
    use_feat = cfg.feature_loss and cfg.lambda_feat > 0 and bool(points)
    use_ml = cfg.mutual_learning and cfg.students > 1 and cfg.lambda_ml > 0
    t_feat = _Features(teacher, points) if use_feat else None

    students = []
    s_feats = []
    for _ in range(cfg.students):
        m = copy.deepcopy(model).to(device).train()
        for p in m.parameters():
            p.requires_grad_(True)
        students.append(_Student(m, groups, cfg))
        s_feats.append(_Features(m, points) if use_feat else None)
    view_gen = [torch.Generator().manual_seed(cfg.seed * 1000 + k) for k in range(cfg.students)]

    ramp_steps = max(1, round(cfg.ramp_end * total_steps))
    select_stop = round(cfg.select_until * total_steps)
    interval = cfg.update_interval
    if select_stop <= 2 * interval:
        raise ConfigError(
            f"{total_steps} steps are too few for update_interval={interval}: the sparse set is chosen "
            f"every {interval} steps until step {select_stop} (select_until={cfg.select_until}), and "
            f"needs at least two choices; train for more than {math.ceil(2 * interval / cfg.select_until)} "
            "steps or lower update_interval")
    history: list[dict[str, Any]] = []
    acc = {"kd": 0.0, "feat": 0.0, "ml": 0.0, "n": 0}
    selected_once = False
    last = {"predicted": baseline, "sparsity": 0.0}

    def cosine_lr(step: int) -> float:
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * step / total_steps))

    def check(step: int) -> None:
        nonlocal selected_once
        target_now = ramp_budget(step, ramp_steps, baseline, budget, cfg.ramp)
        target_next = ramp_budget(step + interval, ramp_steps, baseline, budget, cfg.ramp)
        record: dict[str, Any] = {"step": step, "lr": cosine_lr(step), "budget_t": target_now}
        if acc["n"]:
            record.update({k: acc[k] / acc["n"] for k in ("kd", "feat", "ml")})
        preds, lams, sel = [], [], []
        for st in students:
            zero = st.zero_counts()
            zero_cost = cost_of({g.name: g.width - z for g, z in zip(groups, zero, strict=True)})
            if selected_once and zero_cost > target_now * (1 + 1e-9):
                st.lambda_s *= cfg.lambda_growth  # behind schedule: shrink harder
            if selected_once and step >= ramp_steps:
                # after the ramp, E must reach exact zero by the end: the thresholds still to
                # come (sum of lr * lambda_s) must at least cover twice the largest E gate norm
                rest = sum(cosine_lr(s) for s in range(step, total_steps))
                worst = st.max_sparse_norm()
                if rest > 0 and worst > 0:
                    st.lambda_s = max(st.lambda_s, 2 * worst / rest)
            if step < select_stop and (cfg.dynamic_set or not selected_once):
                b = target_next if cfg.dynamic_set else budget
                s = select_channels(dict(zip(names, st.normalised_sensitivity(), strict=True)), cost_of, b,
                                    round_to=round_to, min_width=min_width,
                                    latency_weighting=cfg.latency_weighting)
                st.sparse = [np.setdiff1d(np.arange(g.width), s.keep[g.name]) for g in groups]
                sel.append(s.predicted_ms)
                if st.lambda_s == 0.0:
                    norms = np.concatenate([gg.norms() for gg in st.gates])
                    st.lambda_s = float(np.median(norms)) / (cfg.lr * interval)
            preds.append(zero_cost)
            lams.append(st.lambda_s)
        selected_once = selected_once or bool(sel)
        total_ch = sum(g.width for g in groups)
        last["predicted"] = preds[0]
        last["sparsity"] = sum(students[0].zero_counts()) / total_ch
        record.update({"predicted": preds, "selected": sel, "lambda_s": lams,
                       "sparsity": last["sparsity"]})
        history.append(record)
        acc.update(kd=0.0, feat=0.0, ml=0.0, n=0)

    step = 0
    while step < total_steps:
        trained = 0
        for bi, batch in enumerate(data):
            if bi < cfg.heldout_batches:
                continue
            if step >= total_steps:
                break
            trained += 1
            if step % interval == 0 and step > 0:
                check(step)
            x = input_of(batch)
            if world > 1:
                x = x.tensor_split(world)[rank]
            x = x.to(device)
            lr = cosine_lr(step)
            views = [x] + [_shift_view(x, view_gen[k]) for k in range(1, cfg.students)]
            with torch.no_grad():
                t_logits, t_feats = [], []
                for v in views:
                    t_logits.append(teacher(v))
                    t_feats.append(t_feat.take() if t_feat else [])
            s_logits, s_fts = [], []
            for k, st in enumerate(students):
                s_logits.append(st.model(views[k]))
                s_fts.append(s_feats[k].take() if s_feats[k] else [])
            total = torch.zeros((), device=device)
            before = {k: acc[k] for k in ("kd", "feat", "ml")}
            for k in range(cfg.students):
                l_kd = kd_loss(s_logits[k], t_logits[k], cfg.tau)
                l_ft = attention_loss(s_fts[k], t_feats[k]) if use_feat else torch.zeros((), device=device)
                peers = [s_logits[j].detach() for j in range(cfg.students) if j != k]
                l_ml = mutual_loss(s_logits[k], peers, cfg.tau) if use_ml else torch.zeros((), device=device)
                total = total + cfg.lambda_kd * l_kd + cfg.lambda_feat * l_ft + cfg.lambda_ml * l_ml
                acc["kd"] += float(l_kd.detach()) / cfg.students
                acc["feat"] += float(l_ft.detach()) / cfg.students
                acc["ml"] += float(l_ml.detach()) / cfg.students
            acc["n"] += 1
            step_losses = {k: acc[k] for k in ("kd", "feat", "ml")}
            for st in students:
                st.opt.zero_grad(set_to_none=True)
            total.backward()
            if world > 1:
                for st in students:
                    for p in st.model.parameters():
                        if p.grad is not None:
                            torch.distributed.all_reduce(p.grad)
                            p.grad /= world
            for st in students:
                st.update_sensitivity(cfg.ema)
                for pg in st.opt.param_groups:
                    pg["lr"] = lr
                st.opt.step()
                if selected_once:
                    st.ista(lr * st.lambda_s)
            step += 1
            if on_progress is not None:
                on_progress(Progress("prune", step, total_steps, {
                    **{k: step_losses[k] - before[k] for k in before},
                    cost.unit: last["predicted"], "sparsity": last["sparsity"]}))
        if not trained and step < total_steps:
            raise DataError("pruning data yielded no training batches on a later pass; it must "
                            "yield the same batches every time it is iterated")
    check(step)
    for f in [t_feat, *s_feats]:
        if f is not None:
            f.remove()
    if world > 1:  # BatchNorm running statistics were computed per rank: average them
        for st in students:
            for b in st.model.buffers():
                if b.is_floating_point():
                    torch.distributed.all_reduce(b)
                    b /= world

    # finish: hard-zero E, pick the student closest to the teacher, remove the zeros
    hard = []
    for st in students:
        hard.append(st.max_sparse_norm())
        for gg, e in zip(st.gates, st.sparse, strict=True):
            gg.zero(torch.as_tensor(e))
        st.model.eval()
    kls = []
    with torch.no_grad():
        for st in students:
            kl = [float(kd_loss(st.model(h.to(device)), teacher(h.to(device)), 1.0)) for h in heldout]
            kls.append(float(np.mean(kl)))
    best = int(np.argmin(kls))
    # removal and its lossless check run on the CPU in fp32: on a GPU, convolutions may use
    # TF32, whose rounding differs between the masked and the pruned shapes (~1e-2 on logits)
    masked = students[best].model.cpu()
    cpu_example = example.cpu()
    # remove exactly E (all zero now); other channels that happen to be zero stay, so widths
    # keep the runtime-friendly multiples of round_to the selection priced
    zero = {g.name: e.tolist() for g, e in zip(groups, students[best].sparse, strict=True) if len(e)}
    pruned = remove_channels(masked, cpu_example, zero).eval() if zero else copy.deepcopy(masked).eval()
    with torch.no_grad():
        diffs = [float((masked(h) - pruned(h)).abs().max()) for h in heldout]
    diff = max(diffs)
    if diff > LOSSLESS_TOL:
        raise PruningStructureError(
            f"removing the zero channels changed the logits by {diff:.3g} (> {LOSSLESS_TOL}); a module "
            f"in groups {sorted(zero)} does not map a zero channel to zero (e.g. a bias after the gate "
            "or a non-ReLU activation); exclude it or report the model")
    for p in pruned.parameters():
        p.requires_grad_(False)
    predicted = cost.of_model(pruned)
    if predicted > budget * (1 + 1e-6):
        raise EdgepruneError(f"internal error: pruned model predicts {predicted:.4g} {cost.unit} "
                             f"over budget {budget:.4g}; please report it")
    after = {g.name: g.width - len(zero.get(g.name, [])) for g in groups}
    notes = []
    if not use_feat and cfg.feature_loss:
        notes.append("feature loss off: no feature point with spatial size > 1x1")
    return PruneResult(
        model=pruned, target=target, cost_unit=cost.unit, cost_source=cost.source,
        baseline_predicted_ms=baseline, predicted_ms=predicted, budget_ms=budget,
        group_widths_before=full, group_widths_after=after,
        widths_before=widthmap({}), widths_after=widthmap(after),
        macs_before=_macs(teacher, example), macs_after=_macs(pruned, cpu_example),
        params_before=sum(p.numel() for p in teacher.parameters()),
        params_after=sum(p.numel() for p in pruned.parameters()),
        student=best, student_kl=tuple(kls), removal_max_abs_diff=diff,
        max_hard_zeroed_norm=max(hard), history=tuple(history), config=cfg, steps=step,
        seconds=time.perf_counter() - t_start, notes=tuple(notes))


def _macs(model: nn.Module, example: torch.Tensor) -> int:
    from edgeprune.profile.layers import layer_units

    return int(sum(u.macs() for u in layer_units(model, tuple(example.shape[1:]))))
