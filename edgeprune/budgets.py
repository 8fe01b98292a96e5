"""Latency budgets as a CI gate: "model X must run under N ms on device Y".

A budgets file (``edgeprune-budgets.toml``) lists budgets; paths are relative to the file::

    [[budget]]
    artifact = "out/bundle/model.tflite"   # .tflite/.onnx file, bundle directory or .safetensors
    target = "raspberry-pi-4-litert"
    max_ms = 12.0
    mode = "measure"                       # measure on the target (default) ...

    [[budget]]
    artifact = "out/bundle"
    target = "raspberry-pi-4-litert"
    max_ms = 12.0
    mode = "predict"                       # ... or predict from the target's latency profile,
    profile = "profiles/pi4/resnet20.json" # for CI runners that cannot reach the device

:func:`check` measures (or predicts) every budget, several devices at once and one budget at a
time per device, and returns a :class:`BudgetReport`: a table, ``exit_code`` (0 all within
budget, 1 a budget blown, 2 something could not be measured: never 0 on a failed
measurement), JUnit XML and Markdown.
"""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeprune.errors import ConfigError, EdgepruneError
from edgeprune.targets import Target, load_target
from edgeprune.types import Progress

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MODES = ("measure", "predict")
_KEYS = {"artifact", "target", "max_ms", "mode", "profile", "name"}


@dataclass(frozen=True)
class Budget:
    """One budget: ``artifact`` on ``target`` at most ``max_ms``, measured or predicted."""

    artifact: Path
    target: Target
    max_ms: float
    mode: str = "measure"
    profile: Path | None = None  # predict mode: the target's latency profile of this model
    name: str = ""

    def __post_init__(self) -> None:
        where = f"budget {self.label!r}"
        if self.mode not in MODES:
            raise ConfigError(f"{where}: mode = {self.mode!r} is invalid; use one of {list(MODES)}")
        if isinstance(self.max_ms, bool) or not isinstance(self.max_ms, (int, float)) or not self.max_ms > 0:
            raise ConfigError(f"{where}: max_ms = {self.max_ms!r} is invalid; need milliseconds > 0")
        if not self.artifact.exists():
            raise ConfigError(f"{where}: artifact {str(self.artifact)!r} does not exist")
        if self.mode == "predict":
            if self.profile is None:
                raise ConfigError(f"{where}: mode = 'predict' needs profile = 'path/to/profile.json' "
                                  f"(edgeprune profile --target {self.target.name} ...)")
            if not self.profile.is_file():
                raise ConfigError(f"{where}: profile {str(self.profile)!r} does not exist")
        elif self.profile is not None:
            raise ConfigError(f"{where}: profile is for mode = 'predict'; measure mode times the artifact")

    @property
    def label(self) -> str:
        return self.name or f"{self.artifact.name} on {self.target.name}"


def load_budgets(path: str | os.PathLike) -> list[Budget]:
    """The budgets of a budgets file; any bad entry is a :class:`ConfigError` naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"budgets file {str(p)!r} does not exist")
    try:
        raw = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"budgets file {str(p)!r} is not valid TOML: {e}") from None
    extra = sorted(set(raw) - {"budget"})
    if extra:
        raise ConfigError(f"budgets file {str(p)!r}: unknown top-level key(s) {extra}; write [[budget]] "
                          "tables")
    entries = raw.get("budget")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"budgets file {str(p)!r} has no [[budget]] entries")
    out = []
    for i, e in enumerate(entries):
        where = f"{p.name} [[budget]] #{i + 1}"
        unknown = sorted(set(e) - _KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; valid: {sorted(_KEYS)}")
        missing = [k for k in ("artifact", "target", "max_ms") if k not in e]
        if missing:
            raise ConfigError(f"{where}: missing {missing}")
        target = load_target(_rel(p, e["target"]) if str(e["target"]).endswith(".toml") else e["target"])
        out.append(Budget(_rel(p, e["artifact"]), target, e["max_ms"], e.get("mode", "measure"),
                          _rel(p, e["profile"]) if "profile" in e else None, str(e.get("name", ""))))
    return out


def _rel(budgets_file: Path, value: Any) -> Path:
    if not isinstance(value, str):
        raise ConfigError(f"{budgets_file.name}: {value!r} must be a path string")
    q = Path(value)
    return q if q.is_absolute() else budgets_file.parent / q


@dataclass(frozen=True)
class BudgetResult:
    budget: Budget
    status: str  # pass | fail | error
    ms: float | None = None
    pass_spread: float | None = None  # measure mode: slowest / fastest pass median - 1
    error: str = ""
    device: dict[str, Any] | None = None  # the agent's info, for a device target

    @property
    def margin(self) -> float | None:
        """Headroom as a share of the budget (negative: over it)."""
        return None if self.ms is None else 1 - self.ms / self.budget.max_ms

    @property
    def close(self) -> bool:
        """A pass by less than its own passes' spread: a re-run at a slower moment of the
        same machine may fail it (the exit code is still 0; the report says so)."""
        return (self.status == "pass" and self.pass_spread is not None and self.margin is not None
                and self.margin < self.pass_spread)

    @property
    def shown_status(self) -> str:
        return self.status + (" (close)" if self.close else "")

    def to_dict(self) -> dict[str, Any]:
        b = self.budget
        return {"name": b.label, "artifact": str(b.artifact), "target": b.target.name, "mode": b.mode,
                "max_ms": b.max_ms, "ms": self.ms, "margin": self.margin, "status": self.status,
                "close": self.close,
                "pass_spread": self.pass_spread, "error": self.error, "device": self.device,
                "profile": str(b.profile) if b.profile else None}


@dataclass(frozen=True)
class BudgetReport:
    results: tuple[BudgetResult, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def exit_code(self) -> int:
        if any(r.status == "error" for r in self.results):
            return 2
        return 1 if any(r.status == "fail" for r in self.results) else 0

    def __str__(self) -> str:
        lines = [f"{'artifact':28} {'target':24} {'mode':8} {'ms':>9} {'budget':>8} {'margin':>8} "
                 f"{'spread':>7}  status"]
        for r in self.results:
            b = r.budget
            ms = f"{r.ms:.3f}" if r.ms is not None else "-"
            margin = f"{100 * r.margin:+.1f}%" if r.margin is not None else "-"
            spread = f"{100 * r.pass_spread:.1f}%" if r.pass_spread is not None else "-"
            lines.append(f"{_short(str(b.artifact), 28):28} {b.target.name:24} {b.mode:8} {ms:>9} "
                         f"{b.max_ms:8.3f} {margin:>8} {spread:>7}  {r.shown_status}"
                         + (f" ({r.error})" if r.error else ""))
        counts = {s: sum(r.status == s for r in self.results) for s in ("pass", "fail", "error")}
        lines.append(f"{counts['pass']} within budget, {counts['fail']} over, {counts['error']} not measured")
        if n_close := sum(r.close for r in self.results):
            lines.append(f"{n_close} within budget by less than the spread of their own passes: a re-run "
                         "may fail them; leave more headroom or measure on a quieter machine")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code, "results": [r.to_dict() for r in self.results]}

    def to_junit(self) -> str:
        """JUnit XML: one testcase per budget (a blown budget is a failure, a failed
        measurement an error), with the numbers as properties; a close pass carries
        ``close`` and says so in its system-out."""
        suite = ET.Element("testsuite", name="edgeprune check", tests=str(len(self.results)),
                           failures=str(sum(r.status == "fail" for r in self.results)),
                           errors=str(sum(r.status == "error" for r in self.results)))
        for r in self.results:
            b = r.budget
            case = ET.SubElement(suite, "testcase", classname=f"edgeprune.{b.target.name}", name=b.label)
            props = ET.SubElement(case, "properties")
            for k, v in (("mode", b.mode), ("max_ms", b.max_ms), ("ms", r.ms), ("margin", r.margin),
                         ("pass_spread", r.pass_spread)):
                if v is not None:
                    ET.SubElement(props, "property", name=k, value=str(v))
            if r.close:  # a pass, flagged where CI dashboards show it
                ET.SubElement(props, "property", name="close", value="true")
                ET.SubElement(case, "system-out").text = (
                    "within budget by less than the spread of its own passes: a re-run may fail it")
            if r.status == "fail":
                ET.SubElement(case, "failure", message=f"{r.ms:.3f} ms > budget {b.max_ms:g} ms")
            elif r.status == "error":
                ET.SubElement(case, "error", message=r.error)
        return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"

    def to_markdown(self) -> str:
        """A Markdown table (for ``$GITHUB_STEP_SUMMARY``)."""
        icon = {"pass": "pass", "fail": "**FAIL**", "error": "**ERROR**"}
        lines = ["### edgeprune latency budgets", "",
                 "| artifact | target | mode | ms | budget ms | margin | pass spread | status |",
                 "|---|---|---|---:|---:|---:|---:|---|"]
        for r in self.results:
            b = r.budget
            ms = f"{r.ms:.3f}" if r.ms is not None else "-"
            margin = f"{100 * r.margin:+.1f}%" if r.margin is not None else "-"
            spread = f"{100 * r.pass_spread:.1f}%" if r.pass_spread is not None else "-"
            status = icon[r.status] + (" (close)" if r.close else "") + (f": {r.error}" if r.error else "")
            lines.append(f"| `{b.artifact}` | {b.target.name} | {b.mode} | {ms} | {b.max_ms:g} | {margin} | "
                         f"{spread} | {status} |")
        return "\n".join(lines) + "\n"


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else "..." + s[-(n - 3):]


def check(budgets: Sequence[Budget], *,
          on_progress: Callable[[Progress], None] | None = None) -> BudgetReport:
    """Measure or predict every budget; budgets on different devices run concurrently, those
    on one device (one connection; all local targets share this machine) one after another."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, b in enumerate(budgets):
        groups["local" if b.target.is_local else b.target.connection].append(i)
    results: list[BudgetResult | None] = [None] * len(budgets)
    done = 0

    def run_group(idx: list[int]) -> None:
        nonlocal done
        for i in idx:
            results[i] = _check_one(budgets[i])
            done += 1
            if on_progress is not None:
                on_progress(Progress("check", done, len(budgets), {"budget": budgets[i].label}))

    with ThreadPoolExecutor(max_workers=max(1, len(groups))) as pool:
        for f in [pool.submit(run_group, idx) for idx in groups.values()]:
            f.result()
    return BudgetReport(tuple(r for r in results if r is not None))


def _check_one(b: Budget) -> BudgetResult:
    try:
        if b.mode == "predict":
            ms, spread, device = _predict(b), None, None
        else:
            st = _measure(b)
            ms, spread, device = st.median_ms, st.pass_spread, st.device
    except EdgepruneError as e:  # could not measure: an error, never a pass
        return BudgetResult(b, "error", error=str(e))
    return BudgetResult(b, "pass" if ms <= b.max_ms else "fail", ms, spread, device=device)


def _measure(b: Budget):
    from edgeprune.profiling.measurement import measure

    a = b.artifact
    if a.is_dir():
        a = _bundle_artifact(a, b.target)
    if a.suffix == ".safetensors":
        from edgeprune.models.checkpoint import load

        return measure(load(a), b.target)
    return measure(a, b.target)


def _bundle_artifact(d: Path, t: Target) -> Path:
    """The file of a bundle directory that ``t`` runs: its runtime and precision's artifact."""
    from edgeprune.bundle.artifacts import Bundle

    bundle = Bundle.load(d)
    fmt = {("litert", "fp32"): "tflite", ("litert", "int8"): "tflite-int8",
           ("onnxruntime", "fp32"): "onnx"}.get((t.runtime, t.precision))
    if fmt is None:
        raise ConfigError(f"bundle {str(d)!r}: target {t.name!r} ({t.runtime}, {t.precision}) runs none "
                          "of its artifacts that edgeprune can measure")
    return d / bundle.artifact(fmt).file


def _predict(b: Budget) -> float:
    from edgeprune.models.checkpoint import load
    from edgeprune.profiling.latency import LatencyProfile

    a = b.artifact
    if a.suffix != ".safetensors":  # an artifact of a bundle, or the bundle: its source checkpoint
        from edgeprune.bundle.artifacts import Bundle

        a = Bundle.load(a if a.is_dir() else a.parent).source_checkpoint
    profile = LatencyProfile.load(b.profile, target=b.target)  # type: ignore[arg-type]
    return profile.predict_ms(load(a))


__all__ = ["Budget", "BudgetReport", "BudgetResult", "MODES", "check", "load_budgets"]
