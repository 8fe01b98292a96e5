"""``PruneConfig``: every knob of the pruner, frozen and validated (METHOD.md names them)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from edgeprune._config import config_from_dict, config_to_dict
from edgeprune.errors import ConfigError

RAMPS = ("cubic", "exponential", "linear")
IMPORTANCE = ("group", "global")


@dataclass(frozen=True)
class PruneConfig:
    """Knobs of :func:`edgeprune.prune`.

    Training length is ``steps`` optimiser steps, or ``epochs`` passes over the data when
    ``steps`` is None. The budget ramps from the baseline to the budget over the first
    ``ramp_end`` of the steps; the expected-sparse set is re-chosen every ``update_interval``
    steps until ``select_until`` of the steps (after that it is frozen, so ISTA can finish
    zeroing it). ``round_to`` / ``min_width`` default to the target's ``round_to``.

    ``verify`` closes the loop on a measurable target: the pruned model is converted and
    timed on the target with its protocol; while it measures over the budget, the internal
    (predicted) budget is lowered by the measured excess (aiming ``verify_margin`` below the
    budget) and pruning continues for ``verify_steps`` steps (None: 15% of the training
    steps, at least 4 intervals), at most ``verify_rounds`` times. None: on for a local
    target that can be timed (host-litert, host-onnxruntime), off for the analytical
    ``macs`` target and for device targets (True measures through the device's agent).
    A measurement made of several timing runs counts as over only when every run is over
    (a sign test: a model that truly sits at the budget shows that with probability
    2^-runs); a median over the budget that some runs do not show is within the
    measurement's noise, is not acted on, and is said in ``notes``. ``verify_strict``
    tightens on any median excess instead.

    ``verify_early`` (with ``verify``) also measures once where the ramp reaches the budget:
    the model the first student would become if its expected-sparse set were removed then.
    If that measures over the budget (the same rule), the internal budget is lowered at once,
    while the rest of the training (1 - ``ramp_end``) can still recover from the extra cut.
    A correction made only at the end comes with ``verify_steps`` at a small learning rate:
    on ResNet-20 at 0.5x it cut layer3 further and lost 4 points of val top-1
    (bench/results/pruning_ablations.json, "edgeprune: one student").

    ``lr_check`` (default on): before training, a copy of the model is distilled from the
    teacher for 8 steps at ``lr``; if that moves it more than 1 nat (mean KL on the
    held-out batches) from the teacher, the rate is divided by sqrt(10) and tried again,
    down to lr / 100, and the students train one step (sqrt(10)) below the first rate that
    holds, for a margin. The rate used and the trials are in ``PruneResult.lr`` / ``lr_check``
    and a lowered rate is said in ``notes``. The same check guards ``distill_lr``.

    ``distill_epochs`` > 0 adds a last phase: after removal (and after the closed loop, so
    the widths it measured are the ones returned), the pruned model learns from the frozen
    teacher's logits alone (tau^2 KL at ``tau``; SGD with Nesterov momentum, a one-cycle
    cosine schedule peaking at ``distill_lr``) for that many passes over the data, without
    labels. The widths do not change, so neither does the measured latency.

    ``remove_blocks`` lets the pruner remove whole residual blocks (a block whose branch
    output is driven to zero is an identity): True always, False never, None (default) only
    while the budget (or a closed-loop round's internal budget) is below what channel pruning
    alone can reach.
    """

    students: int = 2
    epochs: int = 5
    steps: int | None = None
    lr: float = 0.01
    # before training, lower lr (and distill_lr before distilling) to the largest rate that
    # 8 distillation steps of a copy can take without leaving the teacher (docs/pruning.md)
    lr_check: bool = True
    momentum: float = 0.9
    weight_decay: float = 5e-4
    tau: float = 4.0
    lambda_kd: float = 1.0
    lambda_feat: float = 1000.0
    lambda_ml: float = 1.0
    feature_points: tuple[str, ...] | None = None  # module paths; None: stage outputs
    update_interval: int = 25
    ema: float = 0.9
    ramp: str = "cubic"
    ramp_end: float = 0.6
    select_until: float = 0.9
    lambda_growth: float = 1.5
    shrink_intervals: int = 4
    round_to: int | None = None
    min_width: int | None = None
    heldout_batches: int = 2
    seed: int = 0
    device: str = "cpu"
    # ablation switches
    feature_loss: bool = True
    mutual_learning: bool = True
    latency_weighting: bool = True
    dynamic_set: bool = True
    # how Taylor scores are made comparable across layers before selection: "global" (one mean
    # for all: raw first-order loss changes) or "group" (mean 1 per channel group; the default
    # before 2026-12-06, chosen against on the validation split: docs/pruning.md)
    importance: str = "global"
    # BatchNorm statistics re-estimated after removal on this many training batches (0: off)
    bn_recalibration: int = 0
    # after removal (and the closed loop), label-free distillation of the pruned model from the
    # teacher's logits for this many passes over the data, peak learning rate distill_lr (0: off)
    distill_epochs: int = 0
    distill_lr: float = 0.05
    # whole residual blocks as removable units (None: only while the budget is below the
    # channel floor)
    remove_blocks: bool | None = None
    # closed loop on the measured latency
    verify: bool | None = None
    verify_rounds: int = 3
    verify_steps: int | None = None
    verify_margin: float = 0.01
    verify_strict: bool = False
    verify_early: bool = True

    def __post_init__(self) -> None:
        def bad(name: str, need: str) -> ConfigError:
            return ConfigError(f"PruneConfig.{name}={getattr(self, name)!r} is invalid; need {need}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for name in ("students", "epochs", "update_interval", "verify_rounds", "shrink_intervals"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        for name in ("steps", "verify_steps"):
            v = getattr(self, name)
            if v is not None and (not is_int(v) or v < 1):
                raise bad(name, "None or an integer >= 1")
        if self.remove_blocks is not None and not isinstance(self.remove_blocks, bool):
            raise bad("remove_blocks", "None (only when the budget is below the channel floor), "
                      "true or false")
        if self.verify is not None and not isinstance(self.verify, bool):
            raise bad("verify", "None (on when the target can be timed here), true or false")
        if not isinstance(self.verify_early, bool):
            raise bad("verify_early", "true (also measure where the ramp reaches the budget) or false")
        if not isinstance(self.verify_strict, bool):
            raise bad("verify_strict", "true (tighten on any measured excess) or false (only on an "
                      "excess every timing run shows)")
        if not isinstance(self.verify_margin, (int, float)) or not 0 <= self.verify_margin < 0.5:
            raise bad("verify_margin", "a fraction 0 <= margin < 0.5 (0.01 aims 1% under the budget)")
        for name in ("round_to", "min_width"):
            v = getattr(self, name)
            if v is not None and (not is_int(v) or v < 1):
                raise bad(name, "None (the target's round_to) or an integer >= 1")
        if not is_int(self.distill_epochs) or self.distill_epochs < 0:
            raise bad("distill_epochs", "an integer >= 0 (passes over the data after removal; 0 = off)")
        if not is_int(self.bn_recalibration) or self.bn_recalibration < 0:
            raise bad("bn_recalibration", "an integer >= 0 (training batches; 0 = off)")
        if not is_int(self.heldout_batches) or self.heldout_batches < 1:
            raise bad("heldout_batches", "an integer >= 1")
        if not is_int(self.seed):
            raise bad("seed", "an integer")
        for name in ("lr", "distill_lr", "tau", "lambda_growth"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise bad(name, "a finite number > 0")
        if self.lambda_growth <= 1:
            raise bad("lambda_growth", "a number > 1")
        for name in ("momentum", "weight_decay", "lambda_kd", "lambda_feat", "lambda_ml"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise bad(name, "a finite number >= 0")
        if not 0 <= self.ema < 1:
            raise bad("ema", "0 <= ema < 1")
        if self.importance not in IMPORTANCE:
            raise bad("importance", f"one of {IMPORTANCE}")
        if self.ramp not in RAMPS:
            raise bad("ramp", f"one of {RAMPS}")
        if not 0 < self.ramp_end <= self.select_until <= 1:
            raise ConfigError(f"PruneConfig ramp_end={self.ramp_end}, select_until={self.select_until} "
                              "are invalid; need 0 < ramp_end <= select_until <= 1")
        if self.feature_points is not None:
            fp = self.feature_points
            if isinstance(fp, str) or not all(isinstance(p, str) and p for p in fp):
                raise bad("feature_points", "None or a sequence of module paths")
            object.__setattr__(self, "feature_points", tuple(fp))
        for name in ("feature_loss", "mutual_learning", "latency_weighting", "dynamic_set", "lr_check"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "true or false")
        if not isinstance(self.device, str) or not self.device:
            raise bad("device", "a torch device string such as 'cpu' or 'cuda'")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruneConfig:
        return config_from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        d = config_to_dict(self)
        if d["feature_points"] is not None:
            d["feature_points"] = list(d["feature_points"])
        return d

    def replace(self, **changes: Any) -> PruneConfig:
        return dataclasses.replace(self, **changes)
