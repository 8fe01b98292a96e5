"""The label-free multi-student pruner of METHOD.md, toward a latency (or MACs) budget.

A frozen teacher (the caller's model) supervises N student copies through its predictions
(KD) and attention maps of intermediate features (AT); the students also learn from each
other (mutual learning). Each step, after the optimiser step on that smooth loss, a group
soft-threshold (the ISTA proximal step) shrinks the gates of the channels in each student's
expected-sparse set E_t. E_t is re-chosen every ``update_interval`` steps: the keep-set that
maximises latency-weighted Taylor sensitivity under the ramped budget B_t. At the end the
best student (lowest KL to the teacher on held-out batches) has every channel of E_t
exactly zero; those channels are physically removed, which is lossless. No label is read;
by default nothing is trained afterwards (``PruneConfig.distill_epochs`` adds a label-free
distillation of the pruned model from the teacher's logits, see :func:`distill`).

Deviations from METHOD.md, and why:
- Student views: identical copies of the teacher fed identical batches get identical
  gradients, so mutual learning would be a no-op and the students would never differ.
  Student k >= 1 therefore sees its own random shift (reflect-padded crop, up to 2 pixels) of
  each batch; the teacher is run on every view. Mutual learning then asks the students to
  agree across views of the same images (a consistency term, in the spirit of DML).
- The set E_t chosen at a check is priced against the budget of the *next* check, so ISTA has
  one interval to zero it before the ramp gets there.
- Sensitivity uses the teacher's gate values as theta (sum of theta_T * dL/dtheta, squared):
  a student's own theta shrinks in E_t and would take the score down with it, so nothing
  could leave E_t. With the soft start of lambda_s (below) a gate needs several intervals to
  reach zero; meanwhile a wrongly chosen channel keeps a high score, leaves E_t, stops being
  shrunk and regrows by gradient. A gate at exactly zero gets no gradient through its ReLU
  and its score decays; in the rare case such a channel is kept again, it is restored to the
  teacher's gate (``dynamic_set``). The history counts both per check.
- The threshold of a channel is lr * lambda_s * sqrt(its gate size): a residual stream's gate
  spans several BatchNorms and has a larger norm at the same per-parameter scale.
  lambda_s starts at (median per-parameter gate norm) / (lr * update_interval *
  shrink_intervals), so a median gate needs ``shrink_intervals`` intervals to reach zero if
  the gradient did not push back (time for a wrong choice to show), and grows by
  ``lambda_growth`` at every check where a student's exactly-zero channels do not yet meet
  the ramped budget. After the ramp it is also raised, if needed, so that the thresholds
  still to come (the cosine learning rate decays to zero) add up to twice the largest gate
  norm left in E_t: E_t reaches zero by shrinkage rather than by the final hard-zeroing.
- E_t is frozen after ``select_until`` of training so that the last entrants reach exact
  zero by shrinkage, not by the final hard-zeroing (whose largest norm is reported).
- With ``dynamic_set=False`` E is chosen once, at the first check, against the final budget.

The lifecycle is :class:`Pruner`'s: ``prepare`` (teacher, students, groups, schedules),
``step`` (one optimiser step on a batch, then ISTA; every ``update_interval`` steps a check
re-chooses E_t, adapts lambda_s and records history), ``finalize`` (hard-zero E, pick a
student, remove, check removal) -> :class:`PruneResult`; ``extend`` (a closed-loop round:
continue toward a tighter internal budget, then ``finalize`` again) and ``close``. :func:`run`
drives it over the data and, given a ``measure`` callback, closes the loop on the measured
latency.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.data import input_of
from edgeprune.errors import BudgetBelowFloorError, ConfigError, DataError, EdgepruneError
from edgeprune.graph.blocks import BlockStructure, remove_blocks, residual_blocks
from edgeprune.graph.groups import GroupStructure, group_structure
from edgeprune.graph.layers import model_macs
from edgeprune.graph.surgery import PruningStructureError, remove_channels
from edgeprune.graph.widths import WidthMap
from edgeprune.pruning.config import PruneConfig
from edgeprune.pruning.cost import Cost
from edgeprune.pruning.gates import BlockGate, GroupGates, gates_of
from edgeprune.pruning.ista import group_soft_threshold
from edgeprune.pruning.losses import attention_loss, kd_loss, mutual_loss
from edgeprune.pruning.result import PruneResult
from edgeprune.pruning.select import check_blockless_cost, select_channels, width_floor
from edgeprune.types import Progress

log = logging.getLogger(__name__)

LOSSLESS_TOL = 1e-4  # max abs logit difference allowed between masked and removed models
# the learning-rate check (PruneConfig.lr_check): this many distillation steps of a copy may
# raise its mean KL to the teacher on the held-out batches by at most LR_CHECK_KL nats; else
# the rate is divided by sqrt(10), down to lr / 100 (docs/pruning.md, "The learning-rate check")
LR_CHECK_STEPS = 8
LR_CHECK_KL = 1.0
LR_CHECK_TRIES = 5


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


class _Phase:
    """A stretch of training with its own cosine learning rate (peak ``lr``) and budget ramp
    (``b_start`` -> ``b_end`` over ``ramp_end`` of its steps, E_t chosen until
    ``select_until`` of them): the main run, then each closed-loop continuation."""

    def __init__(self, start: int, steps: int, lr: float, b_start: float, b_end: float,
                 cfg: PruneConfig) -> None:
        self.start, self.steps, self.lr, self.b_start, self.b_end = start, steps, lr, b_start, b_end
        self.end = start + steps
        self.ramp_steps = max(1, round(cfg.ramp_end * steps))
        self.select_stop = start + round(cfg.select_until * steps)
        self.selected = False  # E_t chosen at least once in this phase

    def budget_at(self, step: int, kind: str) -> float:
        return ramp_budget(step - self.start, self.ramp_steps, self.b_start, self.b_end, kind)

    def lr_at(self, step: int) -> float:
        return 0.5 * self.lr * (1 + math.cos(math.pi * min(1.0, (step - self.start) / self.steps)))


# ---- one student ------------------------------------------------------------------------

class _Student:
    """One student: its model, optimiser, gates, Taylor sensitivity (EMA) and its
    expected-sparse set E_t. ``groups``: channel groups and removable blocks (a block is a
    group of one unit). ``teacher_gates``: the teacher's gates of the same groups, the
    reference values for scoring and for restoring a channel that leaves E_t dead.
    ``norm_of[i]``: the groups whose mean score normalises group i's (PruneConfig.importance
    "group": itself, or for a block the channel group holding its gate BatchNorm; "global":
    every channel group)."""

    def __init__(self, model: nn.Module, groups: Sequence[GroupStructure | BlockStructure],
                 cfg: PruneConfig, teacher_gates: Sequence[GroupGates | BlockGate],
                 norm_of: Sequence[int]) -> None:
        self.model = model
        self.gates = [gates_of(model, g) for g in groups]
        self.norm_of = list(norm_of)
        self.ref = [[p.detach() for p in tg.params] for tg in teacher_gates]
        self.ref_rows = [tg.matrix() for tg in teacher_gates]
        self.rms_scale = [gg.row_sizes().sqrt() for gg in self.gates]  # threshold per row
        self.opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
        self.sens = [np.zeros(g.width) for g in groups]
        self.seen = 0
        self.sparse: list[np.ndarray] = [np.zeros(0, dtype=np.int64) for _ in groups]
        self.lambda_s = 0.0
        self.left = self.regrown = 0  # channels that left E_t / of those, restored from zero

    def update_sensitivity(self, rho: float) -> None:
        """EMA of the Taylor score with the teacher's gate values as theta: while a gate in
        E_t shrinks, its score still measures what restoring the channel would bring, so a
        wrongly chosen channel can outrank a kept one and leave E_t before it reaches zero.
        (A gate at exactly zero gets no gradient through its ReLU and its score decays:
        keeping dead channels' last scores instead made channels leave E_t and be restored by
        the dozen at every check, thrashing: ResNet-20 at 0.5x, val 93.85% vs 95.35%,
        bench/results/pruning_dropped_frozen_scores.json.)"""
        for i, gg in enumerate(self.gates):
            s = gg.taylor(self.ref[i])
            self.sens[i] = s if self.seen == 0 else rho * self.sens[i] + (1 - rho) * s
        self.seen += 1

    def normalised_sensitivity(self) -> list[np.ndarray]:
        """Each group's scores divided by the mean score of its ``norm_of`` groups. Per group
        (the default), every group has mean 1, so layers of different gradient scale compare
        (Molchanov et al. normalise per layer), and a block's score is divided by the mean of
        the channel group its gate BatchNorm belongs to: removing the block then costs as much
        as removing that many of the group's average channels. Global: one mean for all, so
        the selection compares raw first-order loss changes across layers."""
        means: dict[tuple[int, ...], float] = {}
        for idx in self.norm_of:
            if idx not in means:
                means[idx] = max(float(np.concatenate([self.sens[j] for j in idx]).mean()), 1e-30)
        return [s / means[idx] for s, idx in zip(self.sens, self.norm_of, strict=True)]

    def set_sparse(self, sparse: list[np.ndarray], *, regrow: bool) -> tuple[int, int]:
        """Make ``sparse`` the new E_t. A channel that leaves E_t stops being shrunk; one
        that left exactly zero (no gradient reaches it any more) is restored to the teacher's
        gate when ``regrow``. Returns (channels that left, of those restored)."""
        left = regrown = 0
        for i, (gg, old, new) in enumerate(zip(self.gates, self.sparse, sparse, strict=True)):
            gone = np.setdiff1d(old, new)
            left += len(gone)
            if regrow and len(gone):
                dead = gone[gg.norms()[gone] == 0]
                if len(dead):
                    gg.write(torch.as_tensor(dead), self.ref_rows[i][torch.as_tensor(dead)])
                    regrown += len(dead)
        self.sparse = sparse
        self.left += left
        self.regrown += regrown
        return left, regrown

    @torch.no_grad()
    def ista(self, threshold: float) -> None:
        """Group soft-threshold E_t's gates by ``threshold`` x sqrt(gate size): a gate with
        more parameters (a residual stream's, with several BatchNorms) has a larger norm at
        the same per-parameter scale, and needs as many steps to reach zero."""
        for gg, e, scale in zip(self.gates, self.sparse, self.rms_scale, strict=True):
            if len(e):
                rows = torch.as_tensor(e)
                gm = gg.matrix()[rows]
                gg.write(rows, group_soft_threshold(gm, threshold * scale[rows.to(scale.device)]))

    def max_sparse_norm(self, *, rms: bool = False) -> float:
        """The largest gate norm in E_t (``rms``: divided by sqrt(gate size))."""
        out = 0.0
        for gg, e, scale in zip(self.gates, self.sparse, self.rms_scale, strict=True):
            if len(e):
                rows = torch.as_tensor(e)
                n = gg.matrix()[rows].norm(dim=1)
                out = max(out, float((n / scale[rows.to(scale.device)] if rms else n).max()))
        return out

    def rms_norms(self, groups: int | None = None) -> np.ndarray:
        """Per-parameter gate norms of every channel of the first ``groups`` groups (all)."""
        return np.concatenate([gg.norms() / scale.cpu().numpy()
                               for gg, scale in zip(self.gates[:groups], self.rms_scale[:groups], strict=True)])

    def zero_counts(self) -> list[int]:
        return [int((gg.norms() == 0).sum()) for gg in self.gates]


# ---- the pruner ------------------------------------------------------------------------

class Pruner:
    """One pruning run of ``model`` (never modified) toward ``budget`` (in ``cost.unit``) on
    ``target``. Call :meth:`prepare` once, :meth:`step` per training batch, then
    :meth:`finalize`. Pure torch: ``cost`` prices layer widths (a latency profile's prediction
    or MACs); no runtime, no file."""

    def __init__(self, model: nn.Module, *, cost: Cost, budget: float, target: str, round_to: int,
                 config: PruneConfig = PruneConfig()) -> None:
        self.model, self.cost, self.budget, self.target = model, cost, float(budget), target
        self.round_to, self.cfg = round_to, config
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={config.device!r} is not available here (no CUDA); use device='cpu'")
        self.step_count = 0
        self.history: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self.requested_budget = self.budget
        self._prepared = False

    # ---- prepare ------------------------------------------------------------------------

    def prepare(self, heldout: Sequence[torch.Tensor], total_steps: int, *, world: int = 1) -> None:
        """Build the teacher, the students and the schedules. ``heldout``: batches never
        trained on (they pick the best student and check removal); ``world``: data-parallel
        ranks whose gradients :meth:`step` averages."""
        cfg = self.cfg
        self.heldout = [h.detach().clone() for h in heldout]
        self.total_steps, self.world = total_steps, world
        device = self.device
        self.example = self.heldout[0][:1].to(device)
        torch.manual_seed(cfg.seed)
        teacher = copy.deepcopy(self.model).to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher
        self.channel_groups = group_structure(teacher, self.example)
        if not self.channel_groups:
            raise PruningStructureError("the model has no prunable channel group (no conv/linear whose "
                                        "output channels feed another layer)")
        self.min_width = cfg.min_width or self.round_to
        # blocks are tracked unless forbidden; they are candidates for removal while
        # _blocks_eligible() (remove_blocks=None: while the budget is below the channel floor,
        # which a closed-loop round may also bring about)
        self.blocks: list[BlockStructure] = (residual_blocks(teacher, self.example)
                                             if cfg.remove_blocks is not False else [])
        self.groups: list[GroupStructure | BlockStructure] = [*self.channel_groups, *self.blocks]
        self.widthmap = WidthMap(teacher, self.channel_groups, self.blocks)
        self.full = {g.name: g.width for g in self.groups}
        self.baseline = self._cost_of(self.full)
        self.channel_floor = self._cost_of(self._floor(blocks=False))
        smallest = self._cost_of(self._floor())
        self.floor_cost = smallest
        unit = self.cost.unit
        if self._blocks_eligible():
            check_blockless_cost(smallest, unit, len(self.blocks), self.channel_floor)
        if self.budget < smallest:
            blocks = (f", its {len(self.blocks)} removable residual blocks removed" if self.blocks
                      else ", the model has no removable residual block" if cfg.remove_blocks is not False
                      else "")
            offer = ""
            if cfg.remove_blocks is False and residual_blocks(teacher, self.example):
                offer = (", or let the pruner remove whole residual blocks (remove_blocks=True; CLI: "
                         "--remove-blocks)")
            raise BudgetBelowFloorError(
                f"budget {self.budget:.4g} {unit} is below the smallest reachable {smallest:.4g} {unit} "
                f"({smallest / self.baseline:.3f}x of the baseline's {self.baseline:.4g} {unit}, every "
                f"group at {max(self.min_width, self.round_to)} channels{blocks}; round_to {self.round_to}, "
                f"min_width {self.min_width}); raise the budget to at least {smallest:.4g}, or lower "
                "round_to and min_width (CLI: --round-to N --min-width N), at the price of widths the "
                f"runtime may run no faster{offer}", budget=self.budget, floor=smallest, unit=unit)

        points = (list(cfg.feature_points) if cfg.feature_points is not None
                  else stage_outputs(teacher, self.example))
        self.use_feat = cfg.feature_loss and cfg.lambda_feat > 0 and bool(points)
        self.use_ml = cfg.mutual_learning and cfg.students > 1 and cfg.lambda_ml > 0
        self.t_feat = _Features(teacher, points) if self.use_feat else None
        self.students: list[_Student] = []
        self.s_feats: list[_Features | None] = []
        teacher_gates = [gates_of(teacher, g) for g in self.groups]
        norm_of = [self._normaliser(i) for i in range(len(self.groups))]
        for _ in range(cfg.students):
            m = copy.deepcopy(self.model).to(device).train()
            for p in m.parameters():
                p.requires_grad_(True)
            self.students.append(_Student(m, self.groups, cfg, teacher_gates, norm_of))
            self.s_feats.append(_Features(m, points) if self.use_feat else None)
        self.view_gen = [torch.Generator().manual_seed(cfg.seed * 1000 + k) for k in range(cfg.students)]

        self.phases = [_Phase(0, total_steps, cfg.lr, self.baseline, self.budget, cfg)]
        self.select_stop = self.phases[0].select_stop
        interval = cfg.update_interval
        if self.select_stop <= 2 * interval:
            raise ConfigError(
                f"{total_steps} steps are too few for update_interval={interval}: the sparse set is "
                f"chosen every {interval} steps until step {self.select_stop} (select_until="
                f"{cfg.select_until}), and needs at least two choices; train for more than "
                f"{math.ceil(2 * interval / cfg.select_until)} steps or lower update_interval")
        self.acc = {"kd": 0.0, "feat": 0.0, "ml": 0.0, "n": 0}
        self.lr_check: list[dict[str, float]] = []
        self.selected_once = False
        self.last = {"predicted": self.baseline, "sparsity": 0.0}
        self._last_check = -1
        self._prepared = True

    @property
    def phase(self) -> _Phase:
        return self.phases[-1]

    def check_lr(self, batches: Sequence[torch.Tensor]) -> float:
        """Before the first step: lower the main phase's learning rate to the largest that
        :func:`stable_lr` finds on ``batches`` (training batches, this rank's slices), and
        record its trials in :attr:`lr_check`. Returns the learning rate."""
        if not self._prepared or self.step_count:
            raise ConfigError("Pruner.check_lr must come after Pruner.prepare and before the first step")
        cfg = self.cfg
        lr, self.lr_check = stable_lr(self.teacher, self.teacher, batches, self.heldout, lr=cfg.lr,
                                      momentum=cfg.momentum, weight_decay=cfg.weight_decay, tau=cfg.tau,
                                      world=self.world)
        self.phases[0].lr = lr
        return lr

    def extend(self, budget: float, steps: int) -> None:
        """Continue after :meth:`finalize` toward a lower internal ``budget`` for ``steps``
        more steps (a closed-loop round): the budget ramps from the students' current cost,
        E_t is re-chosen against it, and the learning rate restarts at the main schedule's
        value at the end of its ramp (where the last channels were being removed)."""
        if not self._prepared:
            raise ConfigError("Pruner.extend before Pruner.prepare")
        if steps < 2 * self.cfg.update_interval + 1:
            raise ConfigError(f"a continuation of {steps} steps is too short; it needs more than two "
                              f"update intervals ({2 * self.cfg.update_interval} steps)")
        main = self.phases[0]
        lr = main.lr_at(main.start + main.ramp_steps)
        now = min(self._zero_cost(st.zero_counts()) for st in self.students)
        self.phases.append(_Phase(self.step_count, steps, lr, max(now, budget), budget, self.cfg))
        self.total_steps = self.step_count + steps
        self.budget = budget
        for st in self.students:
            st.model.train()

    def _cost_of(self, group_widths: dict[str, int]) -> float:
        return self.cost(self.widthmap(group_widths))

    def _zero_cost(self, zero: Sequence[int]) -> float:
        """Cost of a student with its exactly-zero channels removed (``zero``: counts per
        group). E_t's channels reach zero at different steps, so the count passes through
        widths off the round_to grid (15 of a 16-channel block zero); such a width is priced
        at the next multiple up, the width that removal could build. (A profile made before
        channel steps were measured, like the committed ResNet-56 one, refuses off-grid
        widths: a ResNet-56 run at 0.35x stopped on 47 of 64.)"""
        widths = {}
        for g, z in zip(self.groups, zero, strict=True):
            w = g.width - z
            if not isinstance(g, BlockStructure) and w % self.round_to:
                w = min(g.width, self.round_to * math.ceil(w / self.round_to))
            widths[g.name] = w
        return self._cost_of(widths)

    def _floor(self, *, blocks: bool = True) -> dict[str, int]:
        """The narrowest model: every channel group at its floor and (``blocks``) every
        removable block removed."""
        floor = width_floor({g.name: g.width for g in self.channel_groups}, round_to=self.round_to,
                            min_width=self.min_width)
        return {**floor, **{b.name: 0 for b in self.blocks}} if blocks else floor

    def _blocks_eligible(self) -> bool:
        """Whether selection may remove blocks now: ``remove_blocks=True``, or None and the
        (internal) budget is below what channel pruning alone reaches."""
        return bool(self.blocks) and (self.cfg.remove_blocks is True or self.budget < self.channel_floor)

    def _normaliser(self, i: int) -> tuple[int, ...]:
        """Indices of the groups whose mean score normalises group i's. ``importance``
        "global": every channel group. "group": itself for a channel group; for a block, the
        channel group holding its gate BatchNorm (if none does, which the graph does not
        produce for a ResNet or MobileNetV2 block, the block itself)."""
        if self.cfg.importance == "global":
            return tuple(range(len(self.channel_groups)))
        g = self.groups[i]
        if isinstance(g, BlockStructure):
            for j, h in enumerate(self.channel_groups):
                if any(path == g.gate for path, _, _ in h.bns):
                    return (j,)
        return (i,)

    def _lr(self, step: int) -> float:
        return self.phase.lr_at(step)

    # ---- step ---------------------------------------------------------------------------

    def step(self, x: torch.Tensor) -> dict[str, float]:
        """One optimiser step of every student on batch ``x`` (already this rank's slice),
        then the ISTA shrinkage of its expected-sparse set. Returns this step's mean loss
        terms and the latest predicted cost and sparsity."""
        if not self._prepared:
            raise ConfigError("Pruner.step before Pruner.prepare")
        cfg, device, students, acc = self.cfg, self.device, self.students, self.acc
        step = self.step_count
        if step % cfg.update_interval == 0 and step > 0:
            self._check(step)
        x = x.to(device)
        lr = self._lr(step)
        views = [x] + [_shift_view(x, self.view_gen[k]) for k in range(1, cfg.students)]
        with torch.no_grad():
            t_logits, t_feats = [], []
            for v in views:
                t_logits.append(self.teacher(v))
                t_feats.append(self.t_feat.take() if self.t_feat else [])
        s_logits, s_fts = [], []
        for k, st in enumerate(students):
            s_logits.append(st.model(views[k]))
            s_fts.append(self.s_feats[k].take() if self.s_feats[k] else [])
        total = torch.zeros((), device=device)
        before = {k: acc[k] for k in ("kd", "feat", "ml")}
        zero = torch.zeros((), device=device)
        for k in range(cfg.students):
            l_kd = kd_loss(s_logits[k], t_logits[k], cfg.tau)
            l_ft = attention_loss(s_fts[k], t_feats[k]) if self.use_feat else zero
            peers = [s_logits[j].detach() for j in range(cfg.students) if j != k]
            l_ml = mutual_loss(s_logits[k], peers, cfg.tau) if self.use_ml else zero
            total = total + cfg.lambda_kd * l_kd + cfg.lambda_feat * l_ft + cfg.lambda_ml * l_ml
            acc["kd"] += float(l_kd.detach()) / cfg.students
            acc["feat"] += float(l_ft.detach()) / cfg.students
            acc["ml"] += float(l_ml.detach()) / cfg.students
        acc["n"] += 1
        for st in students:
            st.opt.zero_grad(set_to_none=True)
        total.backward()
        for st in students:
            _average_across_ranks((p.grad for p in st.model.parameters() if p.grad is not None),
                                  self.world)
        for st in students:
            st.update_sensitivity(cfg.ema)
            for pg in st.opt.param_groups:
                pg["lr"] = lr
            st.opt.step()
            if self.selected_once:
                st.ista(lr * st.lambda_s)
        self.step_count += 1
        return {**{k: acc[k] - before[k] for k in before}, self.cost.unit: self.last["predicted"],
                "sparsity": self.last["sparsity"]}

    def _check(self, step: int) -> None:
        """Every ``update_interval`` steps: adapt each student's lambda_s, re-choose its
        expected-sparse set E_t against the ramped budget, and record the history."""
        cfg, groups, interval, ph = self.cfg, self.groups, self.cfg.update_interval, self.phase
        if step == self._last_check:
            return  # finalize checked this step already (a continuation starts here)
        self._last_check = step
        target_now = ph.budget_at(step, cfg.ramp)
        target_next = ph.budget_at(step + interval, cfg.ramp)
        record: dict[str, Any] = {"step": step, "lr": self._lr(step), "budget_t": target_now}
        if self.acc["n"]:
            record.update({k: self.acc[k] / self.acc["n"] for k in ("kd", "feat", "ml")})
        preds, lams, sel, left = [], [], [], []
        for st in self.students:
            zero = st.zero_counts()
            zero_cost = self._zero_cost(zero)
            if self.selected_once and zero_cost > target_now * (1 + 1e-9):
                st.lambda_s *= cfg.lambda_growth  # behind schedule: shrink harder
            if self.selected_once and step - ph.start >= ph.ramp_steps:
                # after the ramp, E must reach exact zero by the end: the thresholds still to
                # come (sum of lr * lambda_s) must at least cover twice the largest E gate norm
                rest = sum(self._lr(s) for s in range(step, ph.end))
                worst = st.max_sparse_norm(rms=True)
                if rest > 0 and worst > 0:
                    st.lambda_s = max(st.lambda_s, 2 * worst / rest)
            if step < ph.select_stop and (cfg.dynamic_set or not ph.selected):
                b = target_next if cfg.dynamic_set else ph.b_end
                units = len(groups) if self._blocks_eligible() else len(self.channel_groups)
                s = select_channels(dict(zip([g.name for g in groups[:units]],
                                             st.normalised_sensitivity()[:units], strict=True)),
                                    self._cost_of, b, round_to=self.round_to, min_width=self.min_width,
                                    latency_weighting=cfg.latency_weighting,
                                    blocks=[bl.name for bl in groups[len(self.channel_groups):units]])
                left.append(st.set_sparse([np.setdiff1d(np.arange(g.width), s.keep.get(g.name, np.arange(g.width)))
                                           for g in groups], regrow=cfg.dynamic_set))
                sel.append(s.predicted_cost)
                if st.lambda_s == 0.0:
                    # a channel gate of median per-parameter size needs shrink_intervals intervals
                    # to zero (blocks are not counted: tracking them changes nothing above the floor)
                    st.lambda_s = (float(np.median(st.rms_norms(len(self.channel_groups))))
                                   / (self.phases[0].lr * interval * cfg.shrink_intervals))
            preds.append(zero_cost)
            lams.append(st.lambda_s)
        self.selected_once = self.selected_once or bool(sel)
        ph.selected = ph.selected or bool(sel)
        n_ch = len(self.channel_groups)
        total_ch = sum(g.width for g in self.channel_groups)
        self.last["predicted"] = preds[0]
        self.last["sparsity"] = sum(self.students[0].zero_counts()[:n_ch]) / total_ch
        record.update({"predicted": preds, "selected": sel, "lambda_s": lams,
                       "sparsity": self.last["sparsity"],
                       "left_sparse_set": [n for n, _ in left], "regrown": [r for _, r in left]})
        self.history.append(record)
        self.acc.update(kd=0.0, feat=0.0, ml=0.0, n=0)

    def close(self) -> None:
        """Remove the feature hooks from the teacher and the students (after the last
        :meth:`finalize`)."""
        for f in [getattr(self, "t_feat", None), *getattr(self, "s_feats", [])]:
            if f is not None:
                f.remove()

    # ---- the measurement where the ramp reaches the budget ---------------------------------

    def ramp_check_step(self) -> int | None:
        """The first check whose choice of E_t is priced against the main phase's final budget
        (the ramp has reached it), if at least one more choice follows it; else None."""
        interval, ph = self.cfg.update_interval, self.phases[0]
        at = interval * max(1, math.ceil((ph.ramp_steps - interval) / interval))
        return at if at + interval < ph.select_stop and len(self.phases) == 1 else None

    def preview(self) -> tuple[nn.Module, float]:
        """A copy of student 0 with its expected-sparse set removed now (zeroed on the copy,
        then removed), and its predicted cost; the students are not touched. Call it right
        after a check (:meth:`check_now`)."""
        st = self.students[0]
        masked = copy.deepcopy(st.model).cpu().eval()
        for g, e in zip(self.groups, st.sparse, strict=True):
            if len(e):
                gates_of(masked, g).zero(torch.as_tensor(e))
        pruned, _, _ = self._remove(masked, st.sparse)
        for p in pruned.parameters():
            p.requires_grad_(False)
        return pruned, self.cost.of_model(pruned)

    def check_now(self) -> None:
        """Run this step's check (re-choose E_t) now instead of at the start of the next step."""
        if self.step_count > 0 and self.step_count % self.cfg.update_interval == 0:
            self._check(self.step_count)

    def retarget(self, budget: float) -> None:
        """Lower the internal budget of the running phase: the next checks choose E_t against
        it (after the ramp, at once)."""
        if not budget < self.budget:
            raise ConfigError(f"retarget to {budget:.4g} is not below the internal budget {self.budget:.4g}")
        self.budget = budget
        self.phase.b_end = budget

    def _remove(self, masked: nn.Module, sparse: Sequence[np.ndarray]):
        """``masked`` (its ``sparse`` channels and blocks exactly zero, on the CPU) with them
        removed: (pruned model, zero channels per group, removed blocks)."""
        # remove exactly E (all zero now); other channels that happen to be zero stay, so widths
        # keep the runtime-friendly multiples of round_to the selection priced
        n_ch = len(self.channel_groups)
        zero = {g.name: e.tolist() for g, e in zip(self.groups[:n_ch], sparse[:n_ch], strict=True) if len(e)}
        removed = [b.name for b, e in zip(self.blocks, sparse[n_ch:], strict=True) if len(e)]
        # channels first (the groups were traced on the full model), then blocks (now identities)
        pruned = (remove_channels(masked, self.example.cpu(), zero).eval() if zero
                  else copy.deepcopy(masked).eval())
        if removed:
            pruned = remove_blocks(pruned, removed).eval()
        return pruned, zero, removed

    # ---- finalize -----------------------------------------------------------------------

    def finalize(self) -> PruneResult:
        """Hard-zero E (reporting the largest norm that needed it), pick the student closest
        to the teacher on the held-out batches, remove its zero channels (lossless, checked)
        and return the result."""
        if not self._prepared:
            raise ConfigError("Pruner.finalize before Pruner.prepare")
        cfg, students, teacher = self.cfg, self.students, self.teacher
        device, step = self.device, self.step_count
        self._check(step)
        for st in students:  # BatchNorm running statistics were computed per rank: average them
            _average_across_ranks((b for b in st.model.buffers() if b.is_floating_point()), self.world)
        hard = []
        for st in students:
            hard.append(st.max_sparse_norm())
            for gg, e in zip(st.gates, st.sparse, strict=True):
                gg.zero(torch.as_tensor(e))
            st.model.eval()
        kls = [_heldout_kl(st.model, teacher, self.heldout, device) for st in students]
        best = int(np.argmin(kls))
        # removal and its lossless check run on the CPU in fp32: on a GPU, convolutions may use
        # TF32, whose rounding differs between the masked and the pruned shapes (~1e-2 on logits)
        masked = students[best].model.cpu()
        cpu_example = self.example.cpu()
        pruned, zero, removed = self._remove(masked, students[best].sparse)
        with torch.no_grad():
            diffs = [float((masked(h) - pruned(h)).abs().max()) for h in self.heldout]
        diff = max(diffs)
        if diff > LOSSLESS_TOL:
            raise PruningStructureError(
                f"removing the zero channels{' and blocks ' + str(removed) if removed else ''} changed "
                f"the logits by {diff:.3g} (> {LOSSLESS_TOL}); a module in groups {sorted(zero)} does "
                "not map a zero channel to zero (e.g. a bias after the gate or a non-ReLU activation); "
                "exclude it or report the model")
        for p in pruned.parameters():
            p.requires_grad_(False)
        predicted = self.cost.of_model(pruned)
        if predicted > self.budget * (1 + 1e-6):
            raise EdgepruneError(f"internal error: pruned model predicts {predicted:.4g} {self.cost.unit} "
                                 f"over budget {self.budget:.4g}; please report it")
        after = {g.name: g.width - len(zero.get(g.name, [])) for g in self.channel_groups}
        layers_after = self.widthmap({**after, **{b: 0 for b in removed}})
        notes = []
        if not self.use_feat and cfg.feature_loss:
            notes.append("feature loss off: no feature point with spatial size > 1x1")
        if self.phases[0].lr != cfg.lr:
            notes.append(lowered_lr_note("lr", cfg.lr, self.phases[0].lr, self.lr_check))
        return PruneResult(
            model=pruned, target=self.target, cost_unit=self.cost.unit, cost_source=self.cost.source,
            baseline_cost=self.baseline, predicted_cost=predicted, budget=self.requested_budget,
            internal_budget=self.budget,
            group_widths_before={g.name: g.width for g in self.channel_groups}, group_widths_after=after,
            widths_before=self.widthmap({}), widths_after=layers_after,
            removable_blocks=tuple(b.name for b in self.blocks) if self._blocks_eligible() else (),
            removed_blocks=tuple(removed),
            macs_before=model_macs(teacher, self.example.shape[1:]),
            macs_after=model_macs(pruned, cpu_example.shape[1:]),
            params_before=sum(p.numel() for p in teacher.parameters()),
            params_after=sum(p.numel() for p in pruned.parameters()),
            student=best, student_kl=tuple(kls), removal_max_abs_diff=diff,
            left_sparse_set=students[best].left, regrown=students[best].regrown,
            max_hard_zeroed_norm=max(hard), history=tuple(self.history), config=cfg, steps=step,
            lr=self.phases[0].lr, lr_check=tuple(self.lr_check),
            seconds=time.perf_counter() - self.started, notes=tuple(notes))


# ---- driving it over the data -----------------------------------------------------------

def run(model: nn.Module, data: Iterable, *, cost: Cost, budget: float, target: str,
        round_to: int, config: PruneConfig = PruneConfig(),
        measure: Callable[[nn.Module], tuple] | None = None,
        on_progress: Callable[[Progress], None] | None = None) -> PruneResult:
    """Prune ``model`` (not modified) on unlabeled ``data`` until ``cost`` <= ``budget``.

    The first ``config.heldout_batches`` batches of every pass are held out; the rest train.
    Under ``torch.distributed`` (e.g. ``torchrun``), every rank must see the same batches;
    each takes its slice of every batch and gradients are averaged across ranks.

    ``measure(pruned) -> (measured ms, budget ms[, each timing run's (ms, budget ms)])``
    closes the loop: while the pruned model measures over its budget (in every timing run,
    unless ``config.verify_strict``), the internal budget is lowered by the measured excess
    and pruning continues (``config.verify_rounds`` / ``verify_steps`` / ``verify_margin``);
    every round is recorded in ``PruneResult.verify``.
    """
    cfg = config
    pruner = Pruner(model, cost=cost, budget=budget, target=target, round_to=round_to, config=cfg)
    _check_reiterable(data)
    dist_on = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if dist_on else 0
    world = torch.distributed.get_world_size() if dist_on else 1

    heldout: list[torch.Tensor] = []
    it = iter(data)
    for batch in it:
        heldout.append(input_of(batch))
        if len(heldout) == cfg.heldout_batches:
            break
    # the learning-rate check's batches: the first training batches of this same pass (no
    # extra pass over the data, so the passes the training sees are the ones it saw before)
    probe = [input_of(b) for b in itertools.islice(it, LR_CHECK_STEPS)] if cfg.lr_check else []
    if world > 1:
        probe = [x.tensor_split(world)[rank] for x in probe]
    n_batches = (len(data) if hasattr(data, "__len__")
                 else len(heldout) + len(probe) + sum(1 for _ in it))
    train_batches = n_batches - cfg.heldout_batches
    if train_batches < 1:
        raise DataError(f"pruning data has {n_batches} batch(es); need more than "
                        f"heldout_batches={cfg.heldout_batches} (the first ones are held out "
                        "to pick the best student)")
    total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * train_batches
    pruner.prepare(heldout, total_steps, world=world)
    if cfg.lr_check:
        pruner.check_lr(probe)

    def train_until(until: int) -> None:
        while pruner.step_count < until:
            trained = 0
            for bi, batch in enumerate(data):
                if bi < cfg.heldout_batches:
                    continue
                if pruner.step_count >= until:
                    break
                trained += 1
                x = input_of(batch)
                if world > 1:
                    x = x.tensor_split(world)[rank]
                metrics = pruner.step(x)
                if on_progress is not None:
                    on_progress(Progress("prune", pruner.step_count, until, metrics))
            if not trained and pruner.step_count < until:
                raise DataError("pruning data yielded no training batches on a later pass; it must "
                                "yield the same batches every time it is iterated")

    def finish(result: PruneResult) -> PruneResult:
        if cfg.distill_epochs:
            model, record = distill(result.model, pruner.teacher, data, cfg=cfg, heldout=heldout, probe=probe,
                                    steps=cfg.distill_epochs * train_batches, world=world,
                                    rank=rank, on_progress=on_progress)
            result = dataclasses.replace(result, model=model, distill=record, undistilled=result.model)
        if not cfg.bn_recalibration:
            return result
        taken = []
        for bi, batch in enumerate(data):
            if bi >= cfg.heldout_batches:
                taken.append(input_of(batch))
            if len(taken) == cfg.bn_recalibration:
                break
        recalibrate_batchnorm(result.model, taken)
        return result

    try:
        early = None
        at = pruner.ramp_check_step() if measure is not None and cfg.verify_early else None
        if at is not None:
            train_until(at)
            pruner.check_now()
            early = _ramp_check(pruner, measure, world)
        train_until(total_steps)
        result = pruner.finalize()
        if measure is None:
            return finish(result)
        steps = cfg.verify_steps or max(4 * cfg.update_interval + 1, round(0.15 * total_steps))
        rounds: list[dict[str, Any]] = []
        notes = list(result.notes)
        for r in range(cfg.verify_rounds + 1):
            measured, limit, runs_over, runs = _measured(measure, result.model, world)
            rounds.append({"round": r, "step": pruner.step_count, "internal_budget": pruner.budget,
                           "predicted": result.predicted_cost, "measured_ms": measured,
                           "budget_ms": limit, "measured_over_budget": measured / limit,
                           "timing_runs_over": runs_over, "timing_runs": runs})
            if measured <= limit:
                break
            if not _acts_on(runs_over, runs, cfg):
                notes.append(f"measured {measured:.4g} ms, {100 * (measured / limit - 1):.1f}% over the "
                             f"budget {limit:.4g} ms, but only {runs_over} of {runs} timing runs were "
                             "over it: within the measurement's noise, not tightened "
                             "(PruneConfig.verify_strict tightens on any excess)")
                break
            if r == cfg.verify_rounds:
                break
            # if the measured/predicted ratio holds, this internal budget measures just under it
            internal = _aimed_budget(result.predicted_cost, measured, limit, cfg)
            if internal < pruner.floor_cost:
                notes.append(f"measured {measured:.4g} ms over the budget {limit:.4g} ms; the internal "
                             f"budget it needs ({internal:.4g} predicted) is below the smallest "
                             f"reachable ({pruner.floor_cost:.4g}): lower round_to/min_width"
                             + (", or let it remove residual blocks (remove_blocks=True)"
                                if cfg.remove_blocks is False
                                and residual_blocks(pruner.teacher, pruner.example) else ""))
                break
            if internal < pruner.channel_floor and pruner.floor_cost <= 0 and pruner.blocks:
                notes.append(f"the internal budget {internal:.4g} is below the channel floor and the "
                             "profile prices networks without blocks at <= 0 (not calibrated there): "
                             "this round's selection rests on the measurement only; re-profile")
            pruner.extend(internal, steps)
            train_until(pruner.total_steps)
            result = pruner.finalize()
        last = rounds[-1]
        if last["measured_ms"] > last["budget_ms"] and (cfg.verify_strict
                                                       or last["timing_runs_over"] == last["timing_runs"]):
            notes.append(f"over budget in measurement: {last['measured_ms']:.4g} ms measured against "
                         f"{last['budget_ms']:.4g} ms after {len(rounds) - 1} closed-loop round(s)")
        # a round at the end finalizes again: the ramp check is carried over to that result
        return finish(dataclasses.replace(result, ramp_check=early, verify=tuple(rounds),
                                          notes=tuple(notes),
                                          seconds=time.perf_counter() - pruner.started))
    finally:
        pruner.close()


def distill(model: nn.Module, teacher: nn.Module, data: Iterable, *, cfg: PruneConfig,
            heldout: Sequence[torch.Tensor], steps: int, world: int = 1, rank: int = 0,
            probe: Sequence[torch.Tensor] = (),
            on_progress: Callable[[Progress], None] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of the pruned ``model`` trained ``steps`` steps on the frozen ``teacher``'s
    logits alone (``kd_loss`` at ``cfg.tau``; no label is read), skipping the held-out
    batches of every pass; SGD with Nesterov momentum (weight decay on weights, not on
    BatchNorm or biases) under a one-cycle cosine schedule peaking at ``cfg.distill_lr`` (or
    the lower rate :func:`stable_lr` finds on ``probe``, this rank's slices of training
    batches, with ``cfg.lr_check``; none given: the first of a pass). Returns it on the CPU in
    eval mode, frozen, with a record: epochs, lr (the peak used), lr_check (the check's
    trials), steps, seconds and the mean KL to the teacher on the held-out batches before and
    after."""
    started = time.perf_counter()
    device = next(teacher.parameters()).device
    peak, trials = cfg.distill_lr, []
    if cfg.lr_check:
        peak, trials = stable_lr(model, teacher, probe or _probe_batches(data, cfg.heldout_batches, world, rank),
                                 heldout, lr=cfg.distill_lr, momentum=cfg.momentum,
                                 weight_decay=cfg.weight_decay, tau=cfg.tau, world=world)
    student = copy.deepcopy(model).to(device)
    for p in student.parameters():
        p.requires_grad_(True)
    decay = [p for p in student.parameters() if p.ndim > 1]
    rest = [p for p in student.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": rest, "weight_decay": 0.0}],
                          lr=peak, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak, total_steps=steps,
                                                pct_start=0.15, anneal_strategy="cos",
                                                div_factor=10.0, final_div_factor=100.0)

    def heldout_kl() -> float:
        student.eval()
        return _heldout_kl(student, teacher, heldout, device)

    before = heldout_kl()
    student.train()
    done = 0
    while done < steps:
        trained = 0
        for bi, batch in enumerate(data):
            if bi < cfg.heldout_batches:
                continue
            if done >= steps:
                break
            x = input_of(batch)
            x = (x.tensor_split(world)[rank] if world > 1 else x).to(device)
            with torch.no_grad():
                t_logits = teacher(x)
            loss = kd_loss(student(x), t_logits, cfg.tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _average_across_ranks((p.grad for p in student.parameters() if p.grad is not None), world)
            opt.step()
            sched.step()
            done += 1
            trained += 1
            if on_progress is not None:
                on_progress(Progress("distill", done, steps, {"kd": float(loss.detach()),
                                                              "lr": sched.get_last_lr()[0]}))
        if not trained:
            raise DataError("pruning data yielded no training batches on a later pass; it must "
                            "yield the same batches every time it is iterated")
    # BatchNorm running statistics were computed per rank: average them
    _average_across_ranks((b for b in student.buffers() if b.is_floating_point()), world)
    after = heldout_kl()
    student = student.cpu().eval()
    for p in student.parameters():
        p.requires_grad_(False)
    return student, {"epochs": cfg.distill_epochs, "lr": peak, "lr_check": trials, "steps": steps,
                     "heldout_kl_before": before, "heldout_kl_after": after,
                     "seconds": time.perf_counter() - started}


def stable_lr(model: nn.Module, teacher: nn.Module, batches: Sequence[torch.Tensor],
              heldout: Sequence[torch.Tensor], *, lr: float, momentum: float, weight_decay: float,
              tau: float, world: int = 1) -> tuple[float, list[dict[str, float]]]:
    """The largest of ``lr``, lr/sqrt(10), ..., lr/100 at which distilling a copy of ``model``
    from the frozen ``teacher`` (SGD with Nesterov momentum, KD at ``tau``, one step per
    batch of ``batches``, ``LR_CHECK_STEPS`` of them) raises its mean KL to the teacher on the
    ``heldout`` batches by at most ``LR_CHECK_KL`` nats, measured with the copy's BatchNorm
    running statistics put back to ``model``'s (the drift of the parameters, not of the
    statistics the steps collected); where ``lr`` itself drifts further, one step (sqrt(10))
    below the first rate that does not, for a margin. ``model`` is not touched.

    A rate the model cannot take shows at once: on VGG-Small (a linear classifier on 8,192
    features) 8 steps at 0.01 moved the copy hundreds of nats from the teacher, at 0.001
    under 0.01; the ResNets and MobileNetV2 of the bench moved 0.004-0.049 at 0.01 and at
    most 0.16 at 0.03 on two draws of batches, VGG-Small 724 or more at 0.01: the line (1 nat)
    sits between the two with a wide margin either side (``scripts/bench_lr_check.py``;
    docs/pruning.md, "Why 1 nat"). Returns (the rate, one
    record per rate tried: lr, heldout_kl_before, heldout_kl_after). Raises ConfigError when
    even lr/100 diverges."""
    device = next(teacher.parameters()).device
    if not batches:
        raise DataError("the learning-rate check needs at least one training batch")

    def heldout_kl(m: nn.Module) -> float:
        m.eval()
        kl = torch.tensor([_heldout_kl(m, teacher, heldout, device)], dtype=torch.float64)
        _average_across_ranks([kl], world)  # every rank takes the same decision
        return float(kl)

    trials: list[dict[str, float]] = []
    for i in range(LR_CHECK_TRIES):
        trial = lr * 10 ** (-i / 2)
        m = copy.deepcopy(model).to(device)
        for p in m.parameters():
            p.requires_grad_(True)
        before = heldout_kl(m)
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=trial, momentum=momentum, weight_decay=weight_decay,
                              nesterov=momentum > 0)
        for x in batches:
            x = x.to(device)
            with torch.no_grad():
                t_logits = teacher(x)
            loss = kd_loss(m(x), t_logits, tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _average_across_ranks((p.grad for p in m.parameters() if p.grad is not None), world)
            opt.step()
        # the running statistics the steps collected on the training batches are not the rate's
        # doing (a random-init network on noise moved 0.6 nats at lr/100 by them alone): measure
        # the parameters' drift with the model's own statistics
        with torch.no_grad():
            for b, b0 in zip(m.buffers(), model.buffers(), strict=True):
                b.copy_(b0)
        after = heldout_kl(m)
        trials.append({"lr": trial, "heldout_kl_before": before, "heldout_kl_after": after})
        if after - before <= LR_CHECK_KL:  # False for NaN: a NaN is a divergence
            # a model that could not take lr is near its edge, where the drift rises steeply
            # (VGG-Small: 0.0027 at 0.001, 0.035-0.057 at 0.0032, 834 at 0.01) and 8 steps are
            # a short look: it trains one step further down
            return (trial if i == 0 else trial / math.sqrt(10)), trials
    raise ConfigError(
        f"learning rate {lr:g} and every rate down to {trials[-1]['lr']:.3g} diverge: {len(batches)} "
        f"distillation steps moved a copy of the model {trials[-1]['heldout_kl_after'] - trials[-1]['heldout_kl_before']:.3g} "
        f"nats from the teacher (mean KL on the held-out batches; the check allows {LR_CHECK_KL}); check that the "
        "inputs are normalised as in training, or set a lower rate and lr_check=False")


@torch.no_grad()
def _heldout_kl(model: nn.Module, teacher: nn.Module, heldout: Sequence[torch.Tensor],
                device: torch.device) -> float:
    """Mean over the held-out batches of KL(teacher || model) at temperature 1 (``model`` in
    whatever mode the caller left it): how the best student is picked, and what distillation
    and the learning-rate check measure."""
    return float(np.mean([float(kd_loss(model(h.to(device)), teacher(h.to(device)), 1.0))
                          for h in heldout]))


def lowered_lr_note(name: str, asked: float, used: float, trials: Sequence[dict[str, float]]) -> str:
    """One line saying that the learning-rate check lowered ``name`` to ``used`` and why."""
    first, ok = trials[0], trials[-1]
    return (f"{name} lowered from {asked:g} to {used:.3g} by the learning-rate check: at {asked:g}, "
            f"{LR_CHECK_STEPS} distillation steps moved a copy "
            f"{first['heldout_kl_after'] - first['heldout_kl_before']:.3g} nats from the teacher (mean KL "
            f"on the held-out batches; allowed {LR_CHECK_KL}), at {ok['lr']:.3g} "
            f"{ok['heldout_kl_after'] - ok['heldout_kl_before']:.3g}; it trains one step below that for a "
            "margin. PruneConfig.lr_check=False keeps the rate as given")


def _probe_batches(data: Iterable, heldout_batches: int, world: int, rank: int) -> list[torch.Tensor]:
    """The first ``LR_CHECK_STEPS`` training batches of a pass (this rank's slices)."""
    out = []
    for bi, batch in enumerate(data):
        if bi < heldout_batches:
            continue
        x = input_of(batch)
        out.append(x.tensor_split(world)[rank] if world > 1 else x)
        if len(out) == LR_CHECK_STEPS:
            break
    return out


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Sequence[torch.Tensor]) -> None:
    """Re-estimate every BatchNorm's running mean and variance of ``model`` (in place) as the
    plain average over ``batches`` (unlabeled inputs), then leave it in eval mode: after
    channels are removed, the statistics the students tracked while their gates were still
    shrinking describe a network that no longer exists. No parameter changes."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not batches:
        return
    momenta = [m.momentum for m in bns]
    device = next(model.parameters()).device
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    try:
        for x in batches:
            model(x.to(device))
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        model.eval()


def _average_across_ranks(tensors: Iterable[torch.Tensor], world: int) -> None:
    """Replace each tensor (gradients, BatchNorm statistics) by its mean over the
    ``world`` ranks of torch.distributed, in place; nothing when there is one rank."""
    if world <= 1:
        return
    for t in tensors:
        torch.distributed.all_reduce(t)
        t /= world


def _acts_on(runs_over: int, runs: int, cfg: PruneConfig) -> bool:
    """Whether a median over the budget is acted on: every timing run over it (a sign
    test), or any excess with ``verify_strict``."""
    return runs_over == runs or cfg.verify_strict


def _aimed_budget(predicted: float, measured: float, limit: float, cfg: PruneConfig) -> float:
    """The internal (predicted) budget that lands ``verify_margin`` under the measured budget
    if the measured/predicted ratio holds."""
    return predicted * limit * (1 - cfg.verify_margin) / measured


def _ramp_check(pruner: Pruner, measure: Callable[[nn.Module], tuple], world: int) -> dict[str, Any]:
    """Measure what student 0 would become now (the ramp has reached the budget); if it is
    over the budget in every timing run (any excess, with ``verify_strict``), lower the
    internal budget by the measured excess (``verify_margin`` under it), as the closed loop
    does at the end, while most of the training is still to come."""
    cfg = pruner.cfg
    model, predicted = pruner.preview()
    measured, limit, runs_over, runs = _measured(measure, model, world)
    rec = {"step": pruner.step_count, "internal_budget": pruner.budget, "predicted": predicted,
           "measured_ms": measured, "budget_ms": limit, "measured_over_budget": measured / limit,
           "timing_runs_over": runs_over, "timing_runs": runs, "tightened_to": None}
    if measured > limit and _acts_on(runs_over, runs, cfg):
        internal = _aimed_budget(predicted, measured, limit, cfg)
        if pruner.floor_cost <= internal < pruner.budget:
            pruner.retarget(internal)
            rec["tightened_to"] = internal
    return rec


def _measured(measure: Callable[[nn.Module], tuple], model: nn.Module,
              world: int) -> tuple[float, float, int, int]:
    """(measured ms, measured budget ms, timing runs over their budget, timing runs) of
    ``model``. ``measure`` returns ``(ms, budget ms)`` (one exact measurement: runs 1) or
    ``(ms, budget ms, [(ms, budget ms) of each timing run])``. Under torch.distributed rank 0
    times it (ranks timing at once would slow each other) and every rank gets its numbers, so
    all take the same decision."""
    out = torch.zeros(4, dtype=torch.float64)
    if world == 1 or torch.distributed.get_rank() == 0:
        got = measure(model)
        ms, limit = float(got[0]), float(got[1])
        runs = [(float(m), float(b)) for m, b in got[2]] if len(got) > 2 else [(ms, limit)]
        out[:] = torch.tensor([ms, limit, sum(m > b for m, b in runs), len(runs)], dtype=torch.float64)
    if world > 1:
        torch.distributed.broadcast(out, 0)
    return float(out[0]), float(out[1]), int(out[2]), int(out[3])
