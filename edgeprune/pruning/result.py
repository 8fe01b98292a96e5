""":class:`PruneResult`: what :func:`edgeprune.prune` returns, with its table (``str``), its
JSON form (``to_dict``), its Markdown report (``to_markdown``) and ``save``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from edgeprune.pruning.config import PruneConfig


@dataclass(frozen=True)
class PruneResult:
    """The pruned model and how it got there. Costs are in ``cost_unit``: "ms" predicted on
    the target from its latency profile, or "MMACs" for the analytical ``macs`` target."""

    model: nn.Module
    target: str
    cost_unit: str  # "ms" or "MMACs"
    cost_source: str  # "measured" / "estimate" (the latency profile's) or "analytical"
    baseline_cost: float  # the unpruned model's predicted cost
    predicted_cost: float  # the pruned model's predicted cost
    budget: float
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
    left_sparse_set: int = 0  # channels of the chosen student that left E_t during the run
    regrown: int = 0  # of those, restored from exactly zero
    internal_budget: float | None = None  # the predicted budget the last round pruned to
    # closed-loop rounds on the target: step, internal_budget, predicted, measured_ms,
    # budget_ms (measured budget), measured_over_budget (medians of the timing runs),
    # timing_runs_over, timing_runs; empty when not verified
    verify: tuple[dict[str, Any], ...] = field(default=())
    # the measurement where the ramp reached the budget (PruneConfig.verify_early): the same
    # keys as a verify round, and tightened_to (the new internal budget, or None)
    ramp_check: dict[str, Any] | None = None
    # residual blocks the pruner could remove (empty when block removal was off) / removed:
    # each is an nn.Identity in the pruned model
    removable_blocks: tuple[str, ...] = field(default=())
    removed_blocks: tuple[str, ...] = field(default=())
    # the label-free distillation after removal (PruneConfig.distill_epochs): epochs, lr,
    # steps, seconds, heldout_kl_before / heldout_kl_after (mean KL to the teacher on the
    # held-out batches); None when off
    distill: dict[str, Any] | None = None
    # the peak learning rate the students trained at (PruneConfig.lr, or lower where the
    # learning-rate check lowered it) and the check's trials: lr, heldout_kl_before, heldout_kl_after
    lr: float | None = None
    lr_check: tuple[dict[str, float], ...] = field(default=())
    # the pruned model as it was before that distillation (the same widths, so the same cost):
    # what distillation added can be judged on the same channels; None when off
    undistilled: nn.Module | None = None

    @property
    def measured_ms(self) -> float | None:
        """The returned model's latency measured on the target (None when not verified)."""
        return self.verify[-1]["measured_ms"] if self.verify else None

    @property
    def within_budget(self) -> bool:
        """Measured within the budget when verified, else predicted within it."""
        if self.verify:
            return self.verify[-1]["measured_ms"] <= self.verify[-1]["budget_ms"]
        return self.predicted_cost <= self.budget * (1 + 1e-6)

    @property
    def speedup(self) -> float:
        """Predicted baseline cost over predicted pruned cost."""
        return self.baseline_cost / self.predicted_cost

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, JSON-ready (keys as in edgeprune's earlier reports)."""
        return {
            "target": self.target, "cost_unit": self.cost_unit, "cost_source": self.cost_source,
            "baseline_predicted": self.baseline_cost, "predicted": self.predicted_cost,
            "budget": self.budget, "internal_budget": self.internal_budget,
            "measured_ms": self.measured_ms, "within_budget": self.within_budget,
            "verify": list(self.verify), "ramp_check": self.ramp_check,
            "group_widths_before": self.group_widths_before,
            "group_widths_after": self.group_widths_after,
            "widths_before": {k: list(v) for k, v in self.widths_before.items()},
            "widths_after": {k: list(v) for k, v in self.widths_after.items()},
            "macs_before": self.macs_before, "macs_after": self.macs_after,
            "params_before": self.params_before, "params_after": self.params_after,
            "student": self.student, "student_kl": list(self.student_kl),
            "removal_max_abs_diff": self.removal_max_abs_diff,
            "max_hard_zeroed_norm": self.max_hard_zeroed_norm,
            "left_sparse_set": self.left_sparse_set, "regrown": self.regrown,
            "removable_blocks": list(self.removable_blocks),
            "removed_blocks": list(self.removed_blocks), "distill": self.distill,
            "lr": self.lr, "lr_check": list(self.lr_check),
            "steps": self.steps, "seconds": self.seconds,
            "config": self.config.to_dict(), "notes": list(self.notes),
            "history": list(self.history),
        }

    def __str__(self) -> str:
        u = self.cost_unit
        lines = [
            f"pruned for {self.target}: {self.baseline_cost:.4g} -> {self.predicted_cost:.4g} {u} "
            f"predicted (budget {self.budget:.4g} {u}, {self.speedup:.2f}x)",
            f"params {self.params_before:,} -> {self.params_after:,}   "
            f"MACs {self.macs_before / 1e6:.2f}M -> {self.macs_after / 1e6:.2f}M",
            f"student {self.student} (KL to teacher {', '.join(f'{k:.4f}' for k in self.student_kl)}), "
            f"removal max |dlogit| {self.removal_max_abs_diff:.2e}, largest hard-zeroed gate "
            f"{self.max_hard_zeroed_norm:.2e}, {self.steps} steps in {self.seconds:.0f} s; "
            f"{self.left_sparse_set} channel(s) left the sparse set ({self.regrown} restored from zero)",
            *self._verify_lines(),
            *self._block_lines(),
            *self._distill_lines(),
            *self.notes,
            "",
            f"{'group (root layer)':32} {'before':>6} {'after':>6}",
        ]
        for g, w in self.group_widths_before.items():
            lines.append(f"{g:32} {w:6d} {self.group_widths_after[g]:6d}")
        return "\n".join(lines)

    def _block_lines(self) -> list[str]:
        if not self.removable_blocks:
            return []
        lines = [f"residual blocks removed: {len(self.removed_blocks)} of {len(self.removable_blocks)}"
                 + (f" ({', '.join(self.removed_blocks)})" if self.removed_blocks else "")]
        if self.removed_blocks and not self.distill:
            # measured: removal is lossless but the training could not fully make up for the
            # blocks; label-free distillation afterwards did (docs/benchmarks.md)
            lines.append("nothing was trained after removing blocks: label-free distillation "
                         "afterwards (distill_epochs=8, CLI --distill-epochs 8) recovered 2-5 val "
                         "points on the same widths on the benchmark's ResNets (docs/benchmarks.md)")
        return lines

    def _distill_lines(self) -> list[str]:
        d = self.distill
        if not d:
            return []
        lowered = (f" (lowered from {self.config.distill_lr:g} by the learning-rate check)"
                   if d["lr"] != self.config.distill_lr else "")
        return [f"distilled from the teacher after removal (no labels): {d['epochs']} epoch(s), "
                f"{d['steps']} steps at peak lr {d['lr']:g}{lowered} in {d['seconds']:.0f} s; held-out KL to "
                f"the teacher {d['heldout_kl_before']:.4f} -> {d['heldout_kl_after']:.4f}"]

    def _ramp_line(self) -> list[str]:
        c = self.ramp_check
        if not c:
            return []
        then = (f"internal budget lowered {c['internal_budget']:.4g} -> {c['tightened_to']:.4g} "
                f"{self.cost_unit}" if c["tightened_to"] is not None else "not tightened")
        return [f"at the end of the ramp (step {c['step']}): {c['measured_ms']:.4g} ms measured "
                f"against {c['budget_ms']:.4g} ms ({c['measured_over_budget']:.3f}x, over in "
                f"{c['timing_runs_over']} of {c['timing_runs']} timing runs); {then}"]

    def _verify_lines(self) -> list[str]:
        if not self.verify:
            return self._ramp_line()
        v = self.verify[-1]
        state = "within" if self.within_budget else "OVER"
        if not self.within_budget and v.get("timing_runs_over", 1) < v.get("timing_runs", 1):
            state = f"over in {v['timing_runs_over']} of {v['timing_runs']} timing runs: noise"
        return [f"measured on {self.target}: {v['measured_ms']:.4g} ms against the budget "
                f"{v['budget_ms']:.4g} ms ({v['measured_over_budget']:.3f}x, {state}) after "
                f"{len(self.verify) - 1} closed-loop round(s)", *self._ramp_line()]

    def to_markdown(self, *, title: str = "", command: str = "") -> str:
        """A Markdown report: costs, sizes, the chosen student, every group's width, and the
        training history (budget, predicted cost per student, loss terms) at each check."""
        u = self.cost_unit
        lines = [f"# Pruning report{': ' + title if title else ''} for {self.target}", ""]
        if command:
            lines += [f"`{command}`", ""]
        lines += ["| | before | after |", "|---|---:|---:|",
                  f"| predicted cost ({u}, {self.cost_source}) | {self.baseline_cost:.4g} | "
                  f"{self.predicted_cost:.4g} |",
                  f"| params | {self.params_before:,} | {self.params_after:,} |",
                  f"| MACs | {self.macs_before:,} | {self.macs_after:,} |", "",
                  f"Budget {self.budget:.4g} {u}; student {self.student} chosen (KL to teacher on "
                  f"held-out batches: {', '.join(f'{k:.4f}' for k in self.student_kl)}); removal max "
                  f"|dlogit| {self.removal_max_abs_diff:.2e}; largest gate norm hard-zeroed at the end "
                  f"{self.max_hard_zeroed_norm:.2e}; {self.steps} steps in {self.seconds:.0f} s. "
                  "No labels were read and nothing was fine-tuned after removal." if not self.distill
                  else "No labels were read.", "",
                  "| group (root layer) | width before | width after |", "|---|---:|---:|"]
        lines += [f"| {g} | {w} | {self.group_widths_after[g]} |"
                  for g, w in self.group_widths_before.items()]
        if self.removable_blocks:
            lines += ["", *self._block_lines()]
        if self.distill:
            lines += ["", *self._distill_lines()]
        if self.verify:
            lines += ["", "Measured on the target (closed loop: while over the budget in every timing "
                      "run, the internal budget is lowered by the measured excess and pruning "
                      "continues; medians of the runs):", "",
                      f"| round | step | internal budget ({u}) | predicted ({u}) | measured (ms) | "
                      "budget (ms) | measured / budget | timing runs over |",
                      "|---:|---:|---:|---:|---:|---:|---:|---:|"]
            lines += [f"| {v['round']} | {v['step']} | {v['internal_budget']:.4g} | {v['predicted']:.4g} | "
                      f"{v['measured_ms']:.4g} | {v['budget_ms']:.4g} | {v['measured_over_budget']:.3f} | "
                      f"{v.get('timing_runs_over', '-')} of {v.get('timing_runs', '-')} |"
                      for v in self.verify]
        if self.ramp_check:
            lines += ["", *self._ramp_line()]
        if self.notes:
            lines += ["", *[f"- {n}" for n in self.notes]]
        lines += ["", f"| step | budget_t ({u}) | predicted ({u}, per student) | KD | AT | ML |",
                  "|---:|---:|---|---:|---:|---:|"]
        for h in self.history:
            preds = ", ".join(f"{p:.4g}" for p in h["predicted"])
            lines.append(f"| {h['step']} | {h['budget_t']:.4g} | {preds} | {h.get('kd', 0):.4f} | "
                         f"{h.get('feat', 0):.5f} | {h.get('ml', 0):.4f} |")
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | os.PathLike, *, spec=None, metadata: dict[str, Any] | None = None,
             report: dict[str, Any] | None = None, title: str = "", command: str = "") -> Path:
        """Write ``out_dir``/model.safetensors (the pruned model; ``spec`` defaults to the
        model's own, with ``metadata`` added), prune_report.json (``to_dict`` plus ``report``)
        and prune_report.md; each file atomically. Returns the checkpoint's path."""
        from edgeprune._io import atomic_path, write_json
        from edgeprune.models.checkpoint import save, spec_of

        out = Path(out_dir)
        spec = spec or spec_of(self.model)
        if spec is not None and metadata:
            spec = spec.with_metadata(**metadata)
        ckpt = save(self.model, out / "model.safetensors", spec=spec)
        write_json(out / "prune_report.json", {**(report or {}), **self.to_dict()})
        with atomic_path(out / "prune_report.md") as tmp:
            tmp.write_text(self.to_markdown(title=title, command=command))
        return ckpt
