"""Supervised baseline training and evaluation (the teacher a user brings to pruning).

``train`` returns a new model; the caller's model is never modified.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune._config import config_from_dict, config_to_dict
from edgeprune.data.sources import ImageSource, batches
from edgeprune.errors import ConfigError, DataError
from edgeprune.types import InputSpec, Progress


@dataclass(frozen=True)
class TrainConfig:
    """SGD with Nesterov momentum and a cosine learning-rate schedule."""

    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs={self.epochs} is invalid; need at least 1")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} is invalid; need at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr={self.lr} is invalid; need a finite value > 0")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum={self.momentum} is invalid; need 0 <= momentum < 1")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay={self.weight_decay} is invalid; need >= 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return config_from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


@dataclass(frozen=True)
class TrainResult:
    model: nn.Module
    input_spec: InputSpec
    history: tuple[dict[str, float], ...]  # one entry per epoch
    wall_s: float
    config: TrainConfig = field(default_factory=TrainConfig)

    def __str__(self) -> str:
        rows = ["epoch  loss     train_acc  val_acc"]
        for h in self.history:
            val = f"{h['val_top1']:.4f}" if "val_top1" in h else "   -"
            rows.append(f"{int(h['epoch']):5d}  {h['loss']:.4f}   {h['train_top1']:.4f}     {val}")
        rows.append(f"wall time {self.wall_s:.1f} s")
        return "\n".join(rows)


@dataclass(frozen=True)
class EvalResult:
    top1: float | None  # None when the data has no labels
    images: int
    agreement: float | None = None  # top-1 agreement with a reference model, when given

    def to_dict(self) -> dict[str, Any]:
        return {"top1": self.top1, "images": self.images, "agreement": self.agreement}

    def __str__(self) -> str:
        parts = [f"images {self.images}"]
        if self.top1 is not None:
            parts.append(f"top-1 {100 * self.top1:.2f}%")
        if self.agreement is not None:
            parts.append(f"agreement {100 * self.agreement:.2f}%")
        return ", ".join(parts)


def train(model: nn.Module, data: ImageSource, *, input_spec: InputSpec,
          config: TrainConfig = TrainConfig(), val: ImageSource | None = None,
          on_progress: Callable[[Progress], None] | None = None,
          device: str | torch.device = "cpu", teacher: nn.Module | None = None,
          tau: float = 4.0) -> TrainResult:
    """Train a copy of ``model`` with labels from ``data``; evaluate on ``val`` each epoch.

    With ``teacher``, no label is read: the loss is knowledge distillation from the frozen
    teacher's logits (``tau^2 * KL`` at temperature ``tau``, Hinton et al.), which is how a
    pruned model is fine-tuned without labels. ``device`` is where the steps run (e.g.
    ``"cuda"``); batches are made on the CPU and the returned model is always on the CPU.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={str(device)!r} is not available here (no CUDA); use device='cpu'")
    if teacher is None and not data.labels_requested:
        raise DataError(f"training needs labels; open {data.name!r} with labels=True, or give "
                        "teacher= to distill without labels")
    if not (tau > 0 and math.isfinite(tau)):
        raise ConfigError(f"tau={tau} is invalid; need a finite temperature > 0")
    if teacher is not None:
        teacher = copy.deepcopy(teacher).to(device).eval()
    if data.num_classes and _num_outputs(model, input_spec) < data.num_classes:
        raise ConfigError(
            f"model has {_num_outputs(model, input_spec)} outputs but data {data.name!r} has "
            f"{data.num_classes} classes; create the model with num_classes={data.num_classes}"
        )
    torch.manual_seed(config.seed)
    model = copy.deepcopy(model).to(device).train()
    params_decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    params_no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": params_decay, "weight_decay": config.weight_decay},
         {"params": params_no_decay, "weight_decay": 0.0}],
        lr=config.lr, momentum=config.momentum, nesterov=True,
    )
    steps_per_epoch = max(1, len(data) // config.batch_size)
    total = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=total, pct_start=0.15, anneal_strategy="cos",
        div_factor=10.0, final_div_factor=100.0,
    )
    history: list[dict[str, float]] = []
    step = 0
    t0 = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for b in batches(data, config.batch_size, mean=input_spec.mean, std=input_spec.std,
                         shuffle=True, seed=config.seed * 1000 + epoch,
                         augment=config.augment, drop_last=True):
            x, y = b if isinstance(b, tuple) else (b, None)
            x = x.to(device, non_blocking=True)
            logits = model(x)
            if teacher is None:
                y = y.to(device, non_blocking=True)
                loss = F.cross_entropy(logits, y)
            else:  # labels, if the source has them, are not read
                with torch.no_grad():
                    t = F.log_softmax(teacher(x) / tau, dim=1)
                    y = t.argmax(1)  # "train_top1" is then agreement with the teacher
                loss = tau * tau * F.kl_div(F.log_softmax(logits / tau, dim=1), t, log_target=True,
                                            reduction="batchmean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if on_progress is not None:
                on_progress(Progress("train", step, total, {"epoch": epoch + 1, "loss": float(loss.detach()),
                                                            "lr": sched.get_last_lr()[0]}))
        h = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_top1": correct / max(seen, 1)}
        if val is not None:
            h["val_top1"] = evaluate(model, val, input_spec=input_spec).top1
        history.append(h)
    model.cpu().eval()
    return TrainResult(model, input_spec, tuple(history), time.perf_counter() - t0, config)


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> np.ndarray:
    """Logits of ``model`` (run in eval mode, then put back in its mode) on the normalised
    NCHW batch ``x``, ``batch_size`` images at a time, as float32 numpy."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    try:
        return np.concatenate([model(x[i:i + batch_size].to(device)).cpu().numpy()
                               for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


@torch.no_grad()
def predict(model: nn.Module, data: ImageSource, *, input_spec: InputSpec,
            batch_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits of ``model`` over ``data`` (N, classes) and the labels if the source has them."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    outs, labels = [], []
    try:
        for b in batches(data, batch_size, mean=input_spec.mean, std=input_spec.std):
            x, y = b if isinstance(b, tuple) else (b, None)
            outs.append(model(x.to(device)).cpu().numpy())
            if y is not None:
                labels.append(y.numpy())
    finally:
        model.train(was_training)
    return np.concatenate(outs), (np.concatenate(labels) if labels else None)


def evaluate(model: nn.Module, data: ImageSource, *, input_spec: InputSpec,
             reference: nn.Module | None = None, reference_input_spec: InputSpec | None = None,
             batch_size: int = 256) -> EvalResult:
    """Top-1 accuracy (if ``data`` has labels) and top-1 agreement with ``reference``."""
    logits, labels = predict(model, data, input_spec=input_spec, batch_size=batch_size)
    top1 = float((logits.argmax(1) == labels).mean()) if labels is not None else None
    agreement = None
    if reference is not None:
        ref, _ = predict(reference, data, input_spec=reference_input_spec or input_spec,
                         batch_size=batch_size)
        agreement = float((ref.argmax(1) == logits.argmax(1)).mean())
    return EvalResult(top1, len(logits), agreement)


def _num_outputs(model: nn.Module, spec: InputSpec) -> int:
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, *spec.shape, device=_device_of(model)))
    model.train(was)
    return int(out.shape[-1])


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
