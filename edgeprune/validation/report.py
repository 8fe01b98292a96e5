"""``edgeprune.validate(bundle, data, on=("host", "arm64-emulated", ...))``: every artifact of a
bundle run on its runtime and compared with the bundle's PyTorch checkpoint.

Per artifact and platform: max abs / max relative error of the logits, top-1 agreement,
SQNR (dB) for int8 (of the logits inside the artifact's int8 output range), top-1 accuracy when the data has labels, the runtime version, and a
status: ``pass``, ``fail`` or ``not checked`` (with the reason: CoreML off macOS is run by
the numpy reference interpreter; an op it does not cover is ``not checked``, never
``pass``). ``on`` names where: ``"host"`` (this machine's runtimes) or any device target
(``arm64-emulated``: the aarch64 builds under QEMU; ``raspberry-pi-4-litert``, ...: a real
device), whose TFLite and ONNX artifacts run through the device agent and are compared with
PyTorch and with this machine's runtime; the report keeps each device's ``info``. Timing
there is never part of validation.
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

HOST = "host"


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria per format (docs/export.md, "Parity bars", says why these)."""

    # fp32: max |logit - PyTorch logit| <= atol + rtol * S, S = max |PyTorch logit| over the
    # checked images; for S <= 1 the bar is atol alone (numpy allclose's atol/rtol pair, on
    # the logit scale: float summation order grows with the logits, a conversion bug does not
    # stay under it)
    atol: float | None = None
    rtol: float = 0.0
    min_agreement: float = 1.0  # top-1 agreement with PyTorch (fp32: near-ties not counted)
    max_accuracy_drop: float | None = None  # points of top-1, when labels exist

    def bound(self, scale: float) -> float | None:
        if self.atol is None:
            return None
        return self.atol + (self.rtol * scale if scale > 1 else 0.0)


TOLERANCES = {
    "tflite": Tolerance(atol=1e-4, rtol=1e-5, min_agreement=1.0),
    "onnx": Tolerance(atol=1e-4, rtol=1e-5, min_agreement=1.0),
    "tflite-int8": Tolerance(min_agreement=0.99, max_accuracy_drop=1.0),
    "coreml": Tolerance(min_agreement=0.99),
}


@dataclass(frozen=True)
class Check:
    artifact: str
    format: str
    platform: str  # "host (x86_64)", "arm64-emulated (aarch64, qemu://neoverse-n1)"
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
    vs_x86_max_abs: float | None = None  # a device row: vs this machine's runtime (fp32: reported)
    logit_scale: float | None = None  # max(1, max |PyTorch logit|), to read the fp32 differences by
    bound: float | None = None  # fp32: the max abs bar for this row's logit scale
    near_ties: int | None = None  # fp32: images whose PyTorch top-2 margin is within the bound
    reasons: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class ValidationReport:
    bundle: str
    checks: tuple[Check, ...]
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # target -> its agent's info

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def __add__(self, other: ValidationReport) -> ValidationReport:
        """The checks of two reports of the same bundle (e.g. host and a device) in one."""
        return ValidationReport(self.bundle, self.checks + other.checks, {**self.devices, **other.devices})

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "ok": self.ok, "checks": [asdict(c) for c in self.checks],
                "devices": self.devices}

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


def validate(bundle, data: Iterable, *, on: Sequence[str] = (HOST,), max_images: int = 1000,
             on_progress: Callable[[Progress], None] | None = None) -> ValidationReport:
    """Check every artifact of ``bundle`` (a :class:`Bundle` or its directory) on ``data``:
    normalised NCHW batches, or (x, labels) tuples for accuracy (first ``max_images``), on
    each of ``on`` ("host" or device targets). The artifacts run on their runtimes
    (:mod:`edgeprune.runtimes`); this module only compares."""
    from edgeprune.bundle.artifacts import Bundle
    from edgeprune.data import input_of
    from edgeprune.models.checkpoint import load
    from edgeprune.targets import load_target
    from edgeprune.train import logits_of

    on = tuple(on)
    if not on:
        raise ConfigError("validate on nothing: give on=('host', ...) or device targets")
    targets = {p: load_target(p) for p in on if p != HOST}  # an unknown name fails here
    local = [p for p, t in targets.items() if not t.is_device]
    if local:
        raise ConfigError(f"target(s) {local} run on this machine: validate on 'host' for them")
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
    xn = x.numpy()

    checks: list[Check] = []
    devices: dict[str, dict[str, Any]] = {}
    total = sum(len(bundle.artifacts) for _ in on)
    done = 0
    for plat in on:
        runner = _HostRunner() if plat == HOST else _DeviceRunner(targets[plat])
        try:
            if isinstance(runner, _DeviceRunner):
                devices[plat] = runner.info
            for art in bundle.artifacts:
                done += 1
                try:
                    got, runtime, version, x86 = runner.run(art, bundle.path / art.file, xn)
                except _NotChecked as e:
                    checks.append(Check(art.file, art.format, runner.where, art.runtime, "-",
                                        "not checked", reasons=(str(e),)))
                    continue
                except EdgepruneError as e:  # the artifact does not load or run: a failure
                    checks.append(Check(art.file, art.format, runner.where, art.runtime, "-", "fail",
                                        reasons=(str(e),)))
                    continue
                checks.append(_compare(art, got, ref, labels, ref_top1, runtime, version,
                                       runner.where, x86))
                if on_progress is not None:
                    on_progress(Progress("validate", done, total, {"artifact": art.file, "platform": plat}))
        finally:
            runner.close()
    return ValidationReport(str(bundle.path), tuple(checks), devices)


class _NotChecked(Exception):
    pass


class _HostRunner:
    where = f"host ({platform.machine()})"

    def run(self, art, path: Path, x: np.ndarray) -> tuple[np.ndarray, str, str, None]:
        if art.format == "coreml":
            from edgeprune.runtimes.coreml_ref import UnsupportedOpError, run_mlpackage

            try:
                return run_mlpackage(path, x), "numpy reference", "ML program", None
            except UnsupportedOpError as e:
                raise _NotChecked(f"reference interpreter: {e}") from e
        from edgeprune.runtimes import open_session

        sess = open_session(path, threads=1)
        return sess.run_batched(x), sess.runtime, sess.runtime_version, None

    def close(self) -> None:
        pass


class _DeviceRunner:
    """Artifacts on a device through its agent; each is also run here (the x86 reference)."""

    def __init__(self, target) -> None:
        from edgeprune.runtimes.device import connect

        self.target = target
        self.device = connect(target)
        try:
            self.info = self.device.info()
        except EdgepruneError:
            self.device.close()
            raise
        self.where = f"{target.name} ({self.info.get('machine')}, {target.connection})"

    def run(self, art, path: Path, x: np.ndarray) -> tuple[np.ndarray, str, str, np.ndarray]:
        from edgeprune.runtimes import open_session

        if art.format == "coreml":
            raise _NotChecked("the device agent runs LiteRT and ONNX Runtime, not CoreML")
        rt = RUNTIME_OF[art.format]
        if rt not in self.info.get("runtimes", {}):
            raise _NotChecked(f"the device has no {rt} (its agent reports "
                              f"{sorted(self.info.get('runtimes', {}))})")
        got, version = self.device.run_like_host(path, x)
        return got, rt, version, open_session(path, threads=1).run_batched(x)

    def close(self) -> None:
        self.device.close()


RUNTIME_OF = {"tflite": "litert", "tflite-int8": "litert", "onnx": "onnxruntime", "coreml": "coreml"}


def _compare(art, got: np.ndarray, ref: np.ndarray, labels, ref_top1, runtime: str, version: str,
             where: str, x86: np.ndarray | None) -> Check:
    """One row. ``x86`` is given for a device row: this machine's runtime on the same images.

    fp32: max abs <= the format's bound at this logit scale, and top-1 agreement over the
    images whose PyTorch top-2 margin is larger than the bound (a tie within rounding is not
    a disagreement; they are counted in ``near_ties``). The difference to x86 is reported,
    not gated: the device must match PyTorch, and does so by the same bar. int8: a device
    must match x86 bit for bit; agreement and accuracy are gated on the host's rows only
    (a device sample is small, and its flips are x86's flips when the outputs are equal)."""
    if got.shape != ref.shape:
        return Check(art.file, art.format, where, runtime, version, "fail",
                     reasons=(f"output shape {got.shape} != PyTorch {ref.shape}",))
    diff = np.abs(got - ref)
    rel = float((diff / np.maximum(np.abs(ref), 1e-6)).max())
    scale = max(1.0, float(np.abs(ref).max()))
    same = got.argmax(1) == ref.argmax(1)
    agree = float(same.mean())
    tol = TOLERANCES[art.format]
    bound = tol.bound(scale)
    near_ties = None
    decided = np.ones(len(ref), dtype=bool)
    if bound is not None:
        top2 = np.sort(ref, axis=1)[:, -2:] if ref.shape[1] > 1 else np.zeros((len(ref), 2))
        decided = (top2[:, 1] - top2[:, 0]) > bound
        near_ties = int((~decided).sum())
    sqnr = None
    if art.format == "tflite-int8":
        # inside the int8 output range: a "top2" range saturates low logits on purpose
        q = art.io.output.quantization
        inside = ref if q is None else np.clip(ref, q.scale * (-128 - q.zero_point),
                                               q.scale * (127 - q.zero_point))
        noise = float(np.sum((got - inside) ** 2))
        sqnr = float(10 * np.log10(np.sum(inside ** 2) / noise)) if noise > 0 else float("inf")
    top1 = float((got.argmax(1) == labels).mean()) if labels is not None else None
    reasons = []
    if bound is not None and float(diff.max()) > bound:
        reasons.append(f"max abs {float(diff.max()):.3g} > {bound:.3g} (the bar {tol.atol:g} + "
                       f"{tol.rtol:g} x logit scale {scale:.3g})")
    gate_quality = x86 is None or art.format != "tflite-int8"
    decided_agree = float(same[decided].mean()) if decided.any() else 1.0
    # shares of images are compared at 1e-9: 100 * (0.97 - 0.96) is 1.0000000000000009
    if gate_quality and decided_agree < tol.min_agreement - 1e-9:
        reasons.append(f"top-1 agreement {100 * decided_agree:.2f}% < {100 * tol.min_agreement:g}%"
                       + (f" ({near_ties} near-ties not counted)" if near_ties else ""))
    drop = 100 * (ref_top1 - top1) if top1 is not None and ref_top1 is not None else None
    if (gate_quality and tol.max_accuracy_drop is not None and drop is not None
            and drop > tol.max_accuracy_drop + 1e-9):
        reasons.append(f"accuracy drop {drop:.2f} points > {tol.max_accuracy_drop:g}")
    vs_x86 = None
    if x86 is not None:
        vs_x86 = float(np.abs(got - x86).max())
        if art.format == "tflite-int8" and vs_x86 > 0:
            reasons.append(f"differs from the x86 runtime by {vs_x86:.3g}; int8 must be bit-exact")
    return Check(art.file, art.format, where, runtime, version, "fail" if reasons else "pass",
                 images=len(got), max_abs=float(diff.max()), max_rel=rel, top1_agreement=agree,
                 sqnr_db=sqnr, top1=top1, reference_top1=ref_top1, vs_x86_max_abs=vs_x86,
                 logit_scale=scale, bound=bound, near_ties=near_ties, reasons=tuple(reasons))
