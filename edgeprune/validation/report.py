"""``edgeprune.validate(bundle, data, on=("host", "arm64-emulated"))``: every artifact of a
bundle run on its runtime and compared with the bundle's PyTorch checkpoint.

Per artifact and platform: max abs / max relative error of the logits, top-1 agreement,
SQNR (dB) for int8 (of the logits inside the artifact's int8 output range), top-1 accuracy when the data has labels, the runtime version, and a
status: ``pass``, ``fail`` or ``not checked`` (with the reason: CoreML off macOS is run by
the numpy reference interpreter; an op it does not cover is ``not checked``, never
``pass``). On ``arm64-emulated`` the TFLite and ONNX artifacts also run on aarch64 builds
of their runtimes under QEMU, compared with PyTorch and with the x86 runtime; timing there
is meaningless and never reported.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeprune.errors import ConfigError, EdgepruneError
from edgeprune.types import Progress

PLATFORMS = ("host", "arm64-emulated")


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria per format (the issue's acceptance bars)."""

    # fp32: max |logit - PyTorch logit|, absolute, as the issue sets it. Float rounding grows
    # with the magnitude of the logits, so each row also records the logit scale (max |PyTorch
    # logit|) and a miss says how large the difference is relative to it (docs/export.md)
    max_abs: float | None = None
    min_agreement: float = 1.0  # top-1 agreement with PyTorch
    max_accuracy_drop: float | None = None  # points of top-1, when labels exist


TOLERANCES = {
    "tflite": Tolerance(max_abs=1e-4, min_agreement=1.0),
    "onnx": Tolerance(max_abs=1e-4, min_agreement=1.0),
    "tflite-int8": Tolerance(min_agreement=0.99, max_accuracy_drop=1.0),
    "coreml": Tolerance(min_agreement=0.99),
}
CROSS_FP32 = 1e-5  # aarch64 vs x86 runtime, fp32 artifacts, absolute; int8 must match exactly


@dataclass(frozen=True)
class Check:
    artifact: str
    format: str
    platform: str  # "host (x86_64)", "arm64-emulated (neoverse-n1)"
    runtime: str
    runtime_version: str
    status: str  # pass | fail | not checked
    images: int = 0
    max_abs: float | None = None
    max_rel: float | None = None
    top1_agreement: float | None = None
    sqnr_db: float | None = None
    top1: float | None = None
    reference_top1: float | None = None
    vs_x86_max_abs: float | None = None
    logit_scale: float | None = None  # max(1, max |PyTorch logit|), to read the fp32 differences by
    reasons: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class ValidationReport:
    bundle: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}

    def __str__(self) -> str:
        def f(v, fmt):
            return format(v, fmt) if v is not None else "-"

        lines = [f"{'artifact':18} {'platform':28} {'runtime':22} {'max|d|':>9} {'rel':>9} {'agree':>7} "
                 f"{'SQNR dB':>7} {'top1':>7} {'vs x86':>9}  status"]
        for c in self.checks:
            agree = f"{100 * c.top1_agreement:.1f}%" if c.top1_agreement is not None else "-"
            top1 = f"{100 * c.top1:.2f}%" if c.top1 is not None else "-"
            lines.append(f"{c.artifact:18} {c.platform:28} {c.runtime + ' ' + c.runtime_version:22} "
                         f"{f(c.max_abs, '.2e'):>9} {f(c.max_rel, '.2e'):>9} {agree:>7} "
                         f"{f(c.sqnr_db, '.1f'):>7} {top1:>7} {f(c.vs_x86_max_abs, '.1e'):>9}  {c.status}"
                         + (f" ({'; '.join(c.reasons)})" if c.reasons else ""))
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def validate(bundle, data: Iterable, *, on: Sequence[str] = ("host",), arm64_cpu: str = "neoverse-n1",
             max_images: int = 1000,
             on_progress: Callable[[Progress], None] | None = None) -> ValidationReport:
    """Check every artifact of ``bundle`` (a :class:`Bundle` or its directory) on ``data``:
    normalised NCHW batches, or (x, labels) tuples for accuracy (first ``max_images``). The
    artifacts run on their runtimes (:mod:`edgeprune.runtimes`); this module only compares."""
    from edgeprune.bundle.artifacts import Bundle
    from edgeprune.data import input_of
    from edgeprune.models.checkpoint import load
    from edgeprune.train import logits_of

    on = tuple(on)
    bad = [p for p in on if p not in PLATFORMS]
    if bad or not on:
        raise ConfigError(f"unknown validation platform(s) {bad}; choose from {list(PLATFORMS)}")
    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    model = load(bundle.source_checkpoint)
    xs, ys = [], []
    n = 0
    for b in data:
        x = input_of(b)
        xs.append(x)
        if isinstance(b, (tuple, list)) and len(b) > 1 and isinstance(b[1], torch.Tensor):
            ys.append(b[1])
        n += len(x)
        if n >= max_images:
            break
    if not xs:
        raise ConfigError("validation data yielded no batches")
    x = torch.cat(xs)[:max_images]
    labels = torch.cat(ys)[:max_images].numpy() if len(ys) == len(xs) else None
    ref = logits_of(model, x)
    ref_top1 = float((ref.argmax(1) == labels).mean()) if labels is not None else None

    checks: list[Check] = []
    jobs = [(a, p) for p in on for a in bundle.artifacts if not (p == "arm64-emulated" and a.format == "coreml")]
    for i, (art, plat) in enumerate(jobs):
        path = bundle.path / art.file
        try:
            got, runtime, version, where, x86 = _run(art, path, x.numpy(), plat, arm64_cpu)
        except _NotChecked as e:
            checks.append(Check(art.file, art.format, e.where, art.runtime, "-", "not checked",
                                reasons=(str(e),)))
            continue
        except EdgepruneError as e:  # the artifact does not load or run: that is a failure
            checks.append(Check(art.file, art.format, plat, art.runtime, "-", "fail", reasons=(str(e),)))
            continue
        checks.append(_compare(art, got, ref, labels, ref_top1, runtime, version, where, x86))
        if on_progress is not None:
            on_progress(Progress("validate", i + 1, len(jobs), {"artifact": art.file, "platform": plat}))
    return ValidationReport(str(bundle.path), tuple(checks))


class _NotChecked(Exception):
    def __init__(self, msg: str, where: str) -> None:
        super().__init__(msg)
        self.where = where


def _run(art, path: Path, x: np.ndarray, plat: str, cpu: str
         ) -> tuple[np.ndarray, str, str, str, np.ndarray | None]:
    """(outputs, runtime, its version, where, the x86 runtime's outputs for an emulated run)."""
    from edgeprune.runtimes import arm64, open_session

    host = f"host ({platform.machine()})"
    if plat == "host":
        if art.format == "coreml":
            from edgeprune.runtimes.coreml_ref import UnsupportedOpError, run_mlpackage

            try:
                return run_mlpackage(path, x), "numpy reference", "ML program", host, None
            except UnsupportedOpError as e:
                raise _NotChecked(f"reference interpreter: {e}", host) from e
        sess = open_session(path, threads=1)
        return sess.run_batched(x), sess.runtime, sess.runtime_version, host, None
    where = f"arm64-emulated ({cpu})"
    if not arm64.available():
        raise _NotChecked("aarch64 runtime not built: run scripts/make-arm64-runtime.sh", where)
    got, runtime, version = arm64.run_like_host(path, x, cpu=cpu)
    return got, runtime, version, where, open_session(path, threads=1).run_batched(x)


def _compare(art, got: np.ndarray, ref: np.ndarray, labels, ref_top1, runtime: str, version: str,
             where: str, x86: np.ndarray | None) -> Check:
    if got.shape != ref.shape:
        return Check(art.file, art.format, where, runtime, version, "fail",
                     reasons=(f"output shape {got.shape} != PyTorch {ref.shape}",))
    diff = np.abs(got - ref)
    rel = float((diff / np.maximum(np.abs(ref), 1e-6)).max())
    scale = max(1.0, float(np.abs(ref).max()))
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    sqnr = None
    if art.format == "tflite-int8":
        # inside the int8 output range: a "top2" range saturates low logits on purpose
        q = art.io.output.quantization
        inside = ref if q is None else np.clip(ref, q.scale * (-128 - q.zero_point),
                                               q.scale * (127 - q.zero_point))
        noise = float(np.sum((got - inside) ** 2))
        sqnr = float(10 * np.log10(np.sum(inside ** 2) / noise)) if noise > 0 else float("inf")
    top1 = float((got.argmax(1) == labels).mean()) if labels is not None else None
    tol = TOLERANCES[art.format]
    reasons = []
    if tol.max_abs is not None and float(diff.max()) > tol.max_abs:
        reasons.append(f"max abs {float(diff.max()):.3g} > {tol.max_abs:g} "
                       f"({float(diff.max()) / scale:.2g} of the logit scale {scale:.3g})")
    # shares of images are compared at 1e-9: 100 * (0.97 - 0.96) is 1.0000000000000009
    if agree < tol.min_agreement - 1e-9:
        reasons.append(f"top-1 agreement {100 * agree:.2f}% < {100 * tol.min_agreement:g}%")
    drop = 100 * (ref_top1 - top1) if top1 is not None and ref_top1 is not None else None
    if tol.max_accuracy_drop is not None and drop is not None and drop > tol.max_accuracy_drop + 1e-9:
        reasons.append(f"accuracy drop {drop:.2f} points > {tol.max_accuracy_drop:g}")
    vs_x86 = None
    if x86 is not None:
        vs_x86 = float(np.abs(got - x86).max())
        limit = 0.0 if art.format == "tflite-int8" else CROSS_FP32
        if vs_x86 > limit:
            reasons.append(f"differs from the x86 runtime by {vs_x86:.3g} (> {limit:g}"
                           + ("" if art.format == "tflite-int8" else
                              f"; {vs_x86 / scale:.2g} of the logit scale {scale:.3g}") + ")")
    return Check(art.file, art.format, where, runtime, version, "fail" if reasons else "pass",
                 images=len(got), max_abs=float(diff.max()), max_rel=rel, top1_agreement=agree,
                 sqnr_db=sqnr, top1=top1, reference_top1=ref_top1, vs_x86_max_abs=vs_x86,
                 logit_scale=scale,
                 reasons=tuple(reasons))
