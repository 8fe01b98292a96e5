"""Reports for people: :func:`write_report` turns what a pruning run wrote into report.md with
PNG plots beside it.

A run is the output directory of ``edgeprune prune`` (its prune_report.json) and/or a
benchmark's pruning.json (rows of methods, budgets and seeds per model, measured on a target).
Plots are built as ``matplotlib.figure.Figure`` objects and saved with the Agg renderer: no
pyplot, no global backend state. matplotlib is optional (``pip install 'edgeprune[report]'``)
and imported only when a report is written. Every file is written atomically.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgeprune._io import atomic_path
from edgeprune.errors import ConfigError, MissingDependencyError

PRUNE_REPORT = "prune_report.json"
BENCHMARK = "pruning.json"
REPORT = "report.md"
DPI = 110
FIGSIZE = (7.0, 4.5)  # inches: 770 x 495 pixels at DPI
TRAINING_FIGSIZE = (7.0, 7.0)  # three stacked panels need the height
_VERTICAL_BARS_MAX = 30  # layers; more get a horizontal bar chart that grows in height

_PRUNE_EXPECTED = "expected the prune_report.json that `edgeprune prune` writes"
_BENCH_EXPECTED = ("expected a benchmark's pruning.json: {\"what\", \"host\", \"rows\": [...], "
                   "\"baselines\": {model: {...}}}")
_NUM = "number"
_NUM_OR_NULL = "number or null"
_PRUNE_FIELDS = {
    "target": str, "cost_unit": str, "baseline_predicted": _NUM, "predicted": _NUM, "budget": _NUM,
    "group_widths_before": dict, "group_widths_after": dict, "widths_before": dict,
    "widths_after": dict, "params_before": _NUM, "params_after": _NUM, "macs_before": _NUM,
    "macs_after": _NUM, "history": list,
}
_HISTORY_FIELDS = {"step": _NUM, "budget_t": _NUM, "predicted": list}
_HISTORY_OPTIONAL = {"kd": _NUM, "feat": _NUM, "ml": _NUM, "sparsity": _NUM, "lr": _NUM}
_ROW_FIELDS = {"model": str, "method": str}
_ROW_MEASURED = {"budget_ms": _NUM, "measured_ms": _NUM, "top1": _NUM}
_ROW_OPTIONAL = {
    "labels": bool, "finetune_epochs": _NUM, "seed": _NUM, "budget_ratio": _NUM, "budget_ms": _NUM,
    "baseline_ms": _NUM, "predicted_ms": _NUM_OR_NULL, "macs": _NUM, "params": _NUM,
    "top1_before_finetune": _NUM_OR_NULL, "top1_holdout": _NUM, "top1_val": _NUM,
    "measured_ratio": _NUM, "wall_s": _NUM, "ran_on": str, "infeasible": str,
    "history": list, "widths_before": dict, "widths_after": dict,
    # the budget and unit the pruner itself worked in (its history's), if the row records them
    "pruner_budget": _NUM, "pruner_cost_unit": str, "distill_epochs": _NUM_OR_NULL,
}
_BASELINE_FIELDS = {"measured_ms": _NUM, "top1": _NUM}
_BASELINE_OPTIONAL = {"macs": _NUM, "params": _NUM, "predicted_ms": _NUM_OR_NULL, "top1_holdout": _NUM,
                      "teacher": str}
_LOSSES = (("kd", "KD (teacher to student)"), ("feat", "feature / attention transfer"),
           ("ml", "mutual learning"))
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")  # matplotlib's tab10
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def write_report(run: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Write report.md and its PNG plots for ``run`` (a directory holding prune_report.json
    and/or pruning.json, or one of those files; a .json file of any other name is read as a
    benchmark's pruning.json) into ``out_dir`` (default: the run's
    directory). Returns the path of report.md.

    Raises :class:`ConfigError` when ``run`` holds neither file or one is unreadable, not JSON
    or lacks the keys a report needs; :class:`MissingDependencyError` without matplotlib."""
    run_dir, prune_path, bench_path = _locate(Path(run))
    prune = _load_prune_report(prune_path) if prune_path else None
    bench = _load_benchmark(bench_path) if bench_path else None
    figure = _figure_class()
    out = Path(out_dir) if out_dir is not None else run_dir
    lines: list[str] = []
    if prune is not None:
        lines += _prune_section(prune, out, figure)
    if bench is not None:
        lines += ([""] if lines else []) + _benchmark_section(bench, out, figure)
    with atomic_path(out / REPORT) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return out / REPORT


# ---- reading and checking the run ---------------------------------------------------------


def _locate(run: Path) -> tuple[Path, Path | None, Path | None]:
    """(run directory, prune_report.json or None, pruning.json or None)."""
    if run.is_file():
        if run.name == PRUNE_REPORT:
            return run.parent, run, None
        return run.parent, None, run
    if not run.exists():
        raise ConfigError(f"run {str(run)!r} does not exist; give the output directory of "
                          f"`edgeprune prune` or a benchmark's {BENCHMARK}")
    prune, bench = run / PRUNE_REPORT, run / BENCHMARK
    if not prune.is_file() and not bench.is_file():
        raise ConfigError(f"run {str(run)!r} has no {PRUNE_REPORT} or {BENCHMARK}; give the output "
                          f"directory of `edgeprune prune` or a benchmark's {BENCHMARK}")
    return run, (prune if prune.is_file() else None), (bench if bench.is_file() else None)


def _read_json(path: Path, expected: str) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {str(path)!r}: {e.strerror or e}; {expected}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{str(path)!r} is not text ({e.reason}); {expected}") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"{str(path)!r} is not valid JSON ({e.msg} at line {e.lineno} column "
                          f"{e.colno}); {expected}") from e


def _is(value: Any, kind: Any) -> bool:
    if kind in (_NUM, _NUM_OR_NULL):
        if value is None:
            return kind == _NUM_OR_NULL
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    return isinstance(value, kind)


def _kind_name(kind: Any) -> str:
    names = {str: "string", dict: "JSON object", list: "JSON list", bool: "true/false"}
    return kind if isinstance(kind, str) else names[kind]


def _check(obj: Any, path: Path, where: str, expected: str, required: dict[str, Any],
           optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """``obj`` itself, once it is a JSON object with every ``required`` key and every present
    key of ``required``/``optional`` of the right kind; else a ConfigError naming them."""
    if not isinstance(obj, dict):
        raise ConfigError(f"{str(path)!r}: {where} is a {type(obj).__name__}, not a JSON object; "
                          f"{expected}")
    bad = [f"no {k!r}" for k in required if k not in obj]
    for k, kind in {**(optional or {}), **required}.items():
        if k in obj and not _is(obj[k], kind):
            bad.append(f"{k!r} is {repr(obj[k])[:40]}, not a {_kind_name(kind)}")
    if bad:
        raise ConfigError(f"{str(path)!r}: {where} has {', '.join(bad)}; {expected}")
    return obj


def _check_widths(before: dict, after: dict, path: Path, where: str, expected: str,
                  pair: bool) -> None:
    """Both maps name the same layers/groups; values are widths (``pair``: [c_in, c_out])."""
    def ok(v: Any) -> bool:
        if pair:
            return isinstance(v, list) and len(v) == 2 and all(_is(x, _NUM) for x in v)
        return _is(v, _NUM)

    if list(before) != list(after):
        raise ConfigError(f"{str(path)!r}: {where} before and after name different layers "
                          f"({sorted(set(before) ^ set(after))[:3]}); {expected}")
    for name, v in [*before.items(), *after.items()]:
        if not ok(v):
            shape = "[c_in, c_out]" if pair else "an integer width"
            raise ConfigError(f"{str(path)!r}: {where} {name!r} is {repr(v)[:40]}, not {shape}; "
                              f"{expected}")


def _check_history(history: list, path: Path, where: str, expected: str) -> None:
    for i, h in enumerate(history):
        _check(h, path, f"{where}[{i}]", expected, _HISTORY_FIELDS, _HISTORY_OPTIONAL)
        if not h["predicted"] or not all(_is(p, _NUM) for p in h["predicted"]):
            raise ConfigError(f"{str(path)!r}: {where}[{i}] 'predicted' is "
                              f"{repr(h['predicted'])[:40]}, not a list of numbers (one per "
                              f"student); {expected}")


def _check_run_details(d: dict, path: Path, where: str, expected: str) -> None:
    """history and widths_before/after of a prune report or a benchmark row."""
    _check_history(d["history"], path, f"{where}history", expected)
    _check_widths(d["widths_before"], d["widths_after"], path, f"{where}widths", expected, True)


def _load_prune_report(path: Path) -> dict[str, Any]:
    d = _check(_read_json(path, _PRUNE_EXPECTED), path, "the report", _PRUNE_EXPECTED,
               _PRUNE_FIELDS)
    _check_widths(d["group_widths_before"], d["group_widths_after"], path, "group widths",
                  _PRUNE_EXPECTED, False)
    _check_run_details(d, path, "", _PRUNE_EXPECTED)
    return d


def _load_benchmark(path: Path) -> dict[str, Any]:
    d = _check(_read_json(path, _BENCH_EXPECTED), path, "the file", _BENCH_EXPECTED,
               {"rows": list, "baselines": dict}, {"what": str, "host": dict})
    for i, r in enumerate(d["rows"]):
        where = f"rows[{i}]"
        feasible = not (isinstance(r, dict) and "infeasible" in r)
        required = {**_ROW_FIELDS, **_ROW_MEASURED} if feasible else _ROW_FIELDS
        _check(r, path, where, _BENCH_EXPECTED, required, _ROW_OPTIONAL)
        if r["model"] not in d["baselines"]:
            raise ConfigError(f"{str(path)!r}: {where} is of model {r['model']!r}, which "
                              f"'baselines' lacks (it has {sorted(d['baselines'])}); "
                              f"{_BENCH_EXPECTED}")
        if r["method"] == "edgeprune" and _has_details(r):
            _check_run_details(r, path, f"{where} ", _BENCH_EXPECTED)
    for model, b in d["baselines"].items():
        _check(b, path, f"baselines[{model!r}]", _BENCH_EXPECTED, _BASELINE_FIELDS,
               _BASELINE_OPTIONAL)
    return d


def _has_details(row: dict[str, Any]) -> bool:
    return all(k in row for k in ("history", "widths_before", "widths_after"))


def _figure_class() -> Callable[..., Any]:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingDependencyError(f"writing a report needs matplotlib, which is not installed "
                                     f"({e}); pip install 'edgeprune[report]'") from e
    return Figure


# ---- plots ---------------------------------------------------------------------------------


def _save(fig: Any, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path.name


def _cost_label(unit: str) -> str:
    return f"predicted latency ({unit})" if unit == "ms" else f"predicted cost ({unit})"


def _plot_widths(figure: Callable[..., Any], before: dict, after: dict, title: str) -> Any:
    """Output channels of every layer before and after, in model order."""
    names = list(before)
    c_before = [before[n][1] for n in names]
    c_after = [after[n][1] for n in names]
    vertical = len(names) <= _VERTICAL_BARS_MAX
    size = FIGSIZE if vertical else (FIGSIZE[0], max(FIGSIZE[1], 1.2 + 0.17 * len(names)))
    fig = figure(figsize=size, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    pos = list(range(len(names)))
    bar = ax.bar if vertical else ax.barh
    bar([p - 0.2 for p in pos], c_before, 0.4, label="before", color=_COLOURS[7])
    bar([p + 0.2 for p in pos], c_after, 0.4, label="after", color=_COLOURS[0])
    if vertical:
        ax.set_xticks(pos, names, rotation=90, fontsize=7)
        ax.set_xlabel("layer (torch module path, model order)")
        ax.set_ylabel("output channels (count)")
        ax.set_xlim(-0.6, len(names) - 0.4)
    else:
        ax.set_yticks(pos, names, fontsize=7)
        ax.invert_yaxis()  # model order top to bottom
        ax.set_ylabel("layer (torch module path, model order)")
        ax.set_xlabel("output channels (count)")
        ax.set_ylim(len(names) - 0.4, -0.6)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y" if vertical else "x", alpha=0.3)
    return fig


def _series(history: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(h["step"], h[key]) for h in history if key in h]
    return [p[0] for p in pts], [p[1] for p in pts]


def _plot_losses(ax: Any, history: Sequence[dict]) -> None:
    drawn, zero = [], []
    for key, label in _LOSSES:
        steps, values = _series(history, key)
        if values and any(v != 0 for v in values):
            ax.plot(steps, values, marker=".", label=label)
            drawn += values
        elif values:
            zero.append(label)
    for label in zero:  # a term that stayed 0 cannot be drawn on a log axis; the legend says so
        ax.plot([], [], " ", label=f"{label}: 0 at every step")
    if drawn and all(v > 0 for v in drawn):
        ax.set_yscale("log")
        ax.set_ylabel("loss (unitless, log)")
    else:
        ax.set_ylabel("loss (unitless)")
    if drawn or zero:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no loss recorded", transform=ax.transAxes, ha="center", va="center")
    ax.set_title("loss terms (mean per step since the previous check)", fontsize=9)


def _plot_costs(ax: Any, history: Sequence[dict], unit: str, budget: float | None) -> None:
    steps = [h["step"] for h in history]
    for s in range(max(len(h["predicted"]) for h in history)):
        pts = [(h["step"], h["predicted"][s]) for h in history if s < len(h["predicted"])]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".",
                label=f"student {s}: predicted", color=_COLOURS[s % len(_COLOURS)])
    ax.plot(steps, [h["budget_t"] for h in history], "--", color="black",
            label="ramped budget (a closed-loop correction lowers it)")
    if budget is not None:
        ax.axhline(budget, color=_COLOURS[3], linestyle=":",
                   label=f"budget at the ramp's end {budget:.4g} {unit}")
    ax.set_ylabel(_cost_label(unit))
    ax.set_title("predicted cost with the zeroed channels removed, vs budget", fontsize=9)
    ax.legend(fontsize=8, loc="best")


def _plot_sparsity(ax: Any, history: Sequence[dict]) -> None:
    steps, values = _series(history, "sparsity")
    pct = [100 * v for v in values]
    ax.plot(steps, pct, marker=".", color=_COLOURS[2])
    ax.set_ylim(0, max([5.0, *pct]) * 1.1)
    ax.set_ylabel("channels exactly 0 (%)")
    ax.set_xlabel("optimiser step")
    ax.set_title("sparsity of student 0 (share of prunable channels)", fontsize=9)
    if not values:
        ax.text(0.5, 0.5, "no sparsity recorded", transform=ax.transAxes, ha="center")


def _plot_training(figure: Callable[..., Any], history: Sequence[dict], unit: str,
                   budget: float | None,
                   title: str) -> Any:
    fig = figure(figsize=TRAINING_FIGSIZE, dpi=DPI, layout="constrained")
    ax_loss, ax_cost, ax_sparse = fig.subplots(3, 1, sharex=True)
    _plot_losses(ax_loss, history)
    _plot_costs(ax_cost, history, unit, budget)
    _plot_sparsity(ax_sparse, history)
    for ax in (ax_loss, ax_cost, ax_sparse):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def _styles(rows: Sequence[dict]) -> dict[str, tuple[str, str]]:
    """Colour and marker per method, in order of first appearance."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    return {m: (_COLOURS[i % len(_COLOURS)], _MARKERS[i % len(_MARKERS)])
            for i, m in enumerate(methods)}


def _budget_lines(ax: Any, rows: Sequence[dict], relative: bool) -> None:
    key = "budget_ratio" if relative else "budget_ms"
    budgets = {r[key]: r.get("budget_ratio") for r in rows if r.get(key) is not None}
    for i, (x, ratio) in enumerate(sorted(budgets.items())):
        ax.axvline(x, color="grey", linestyle=":", linewidth=1,
                   label=("budget (x baseline)" if relative else "budget (ms)") if i == 0 else None)
        if ratio is not None:
            ax.text(x, 1.0, f"{ratio:g}x", transform=ax.get_xaxis_transform(), ha="center",
                    va="bottom", fontsize=7, color="grey")


def _plot_accuracy(figure: Callable[..., Any], model: str, rows: Sequence[dict],
                   baseline: dict, styles: dict[str, tuple[str, str]]) -> Any:
    """Top-1 against measured latency. When every row carries the baseline it was timed
    beside (rows merged from several runs do, and a host's level drifts between runs), the
    latency axis is the ratio to that baseline: absolute ms of different runs do not compare."""
    fig = figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    feasible = [r for r in rows if "infeasible" not in r]
    relative = bool(feasible) and all(r.get("baseline_ms") for r in feasible)

    def x(r: dict) -> float:
        return _ratio(r) if relative else r["measured_ms"]

    _budget_lines(ax, rows, relative)
    ax.plot(1.0 if relative else baseline["measured_ms"], 100 * baseline["top1"], "*",
            markersize=14, color="black", linestyle="none", label="baseline (unpruned)")
    for method, (colour, marker) in styles.items():
        pts = [r for r in feasible if r["method"] == method]
        if pts:
            ax.plot([x(r) for r in pts], [100 * r["top1"] for r in pts], marker,
                    color=colour, linestyle="none", markersize=7, alpha=0.85, label=method)
    ax.set_xlabel("measured latency / baseline measured in the same run (ratio)" if relative
                  else "measured latency (ms)")
    ax.set_ylabel("top-1 accuracy on test (%)")
    ax.set_title(f"{model}: accuracy vs measured latency", pad=12)
    ax.margins(0.08)  # the baseline's star and the extreme points clear the frame
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def _plot_prediction(figure: Callable[..., Any], model: str, rows: Sequence[dict],
                     baseline: dict, styles: dict[str, tuple[str, str]]) -> Any:
    fig = figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    base = [baseline] if baseline.get("predicted_ms") is not None else []
    values = [v for r in [*rows, *base] for v in (r["measured_ms"], r["predicted_ms"])]
    lo, hi = min(values) * 0.85, max(values) * 1.15
    line = [lo, hi]
    ax.fill_between(line, [0.9 * x for x in line], [1.1 * x for x in line], color="grey",
                    alpha=0.2, label="prediction within ±10%")
    ax.plot(line, line, "-", color="grey", linewidth=1, label="predicted = measured")
    for b in base:
        ax.plot(b["measured_ms"], b["predicted_ms"], "*", markersize=14, color="black",
                linestyle="none", label="baseline (unpruned)")
    for method, (colour, marker) in styles.items():
        pts = [r for r in rows if r["method"] == method]
        if pts:
            ax.plot([r["measured_ms"] for r in pts], [r["predicted_ms"] for r in pts], marker,
                    color=colour, linestyle="none", markersize=7, alpha=0.85, label=method)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(f"{model}: predicted vs measured latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


# ---- Markdown --------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    """A value as a Markdown table cell: pipes escaped, one line."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _num(value: Any, spec: str = ".4g", scale: float = 1.0) -> str:
    return "–" if value is None else format(value * scale, spec)


def _table(header: Sequence[str], align: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _run_images(out: Path, figure: Callable[..., Any], d: dict, unit: str, budget: float | None,
                suffix: str, what: str) -> list[str]:
    """widths and training plots of one pruning run (a prune report or a benchmark row)."""
    widths = _save(_plot_widths(figure, d["widths_before"], d["widths_after"],
                                f"Output channels per layer{what}: before vs after pruning"),
                   out / f"widths{suffix}.png")
    lines = [f"![output channels per layer, before and after]({widths})", ""]
    if d["history"]:
        training = _save(_plot_training(figure, d["history"], unit, budget,
                                        f"Pruning{what}: losses, predicted cost, sparsity"),
                         out / f"training{suffix}.png")
        lines += [f"![loss terms, predicted cost and sparsity per step]({training})", ""]
    else:
        lines += ["No training history was recorded, so there is no training plot.", ""]
    return lines


def _prune_section(d: dict[str, Any], out: Path, figure: Callable[..., Any]) -> list[str]:
    u = d["cost_unit"]
    lines = [f"# Pruning report for {d['target']}", ""]
    if d.get("command"):
        lines += [f"`{d['command']}`", ""]
    lines += _table(["", "before", "after"], ["---", "---:", "---:"], [
        [f"predicted cost ({u})", _num(d["baseline_predicted"]), _num(d["predicted"])],
        [f"budget ({u})", "", _num(d["budget"])],
        ["params", _num(d["params_before"], ",.0f"), _num(d["params_after"], ",.0f")],
        ["MACs", _num(d["macs_before"], ",.0f"), _num(d["macs_after"], ",.0f")],
    ])
    lines += ["", "## Plots", ""] + _run_images(out, figure, d, u, d["budget"], "", "")
    lines += ["## Channel groups", ""]
    lines += _table(["group (root layer)", "width before", "width after"], ["---", "---:", "---:"],
                    [[_cell(g), str(w), str(d["group_widths_after"][g])]
                     for g, w in d["group_widths_before"].items()])
    removed = d.get("removed_blocks") or []
    if d.get("removable_blocks"):
        lines += ["", f"Residual blocks removed: {len(removed)} of {len(d['removable_blocks'])}"
                  + (f" ({', '.join(_cell(b) for b in removed)})." if removed else ".")]
    return lines


_ROW_HEADER = ("method", "labels", "fine-tune epochs", "seed", "budget ratio", "budget ms", "measured ms",
               "measured/baseline", "predicted ms", "MACs", "params", "top-1 %",
               "top-1 holdout %", "top-1 before fine-tune %", "wall s", "ran on")


def _ratio(r: dict[str, Any]) -> float | None:
    """A row's measured latency over its baseline's: the row's own ``measured_ratio`` where it
    has one (the benchmark's median of per-round ratios, both timed in the same round), else
    the ratio of the two medians."""
    if isinstance(r.get("measured_ratio"), (int, float)):
        return float(r["measured_ratio"])
    base = r.get("baseline_ms")
    return r["measured_ms"] / base if "measured_ms" in r and base else None


def trained_epochs(r: dict[str, Any]) -> float | None:
    """Epochs a row trained its pruned model, with or without labels: fine-tuning plus
    distillation after removal (``distill_epochs``), which is fine-tuning without labels."""
    ft, distill = r.get("finetune_epochs"), r.get("distill_epochs")
    if ft is None:
        return distill
    return ft + (distill if isinstance(distill, (int, float)) else 0)


def _row_cells(r: dict[str, Any]) -> list[str]:
    ratio = _ratio(r)
    measured = f"infeasible: {_cell(r['infeasible'])}" if "infeasible" in r else \
        _num(r.get("measured_ms"))
    labels = {True: "yes", False: "no"}.get(r.get("labels"), "–")
    return [_cell(r["method"]), labels, _num(trained_epochs(r), "g"),
            _num(r.get("seed"), "g"), _num(r.get("budget_ratio"), "g"), _num(r.get("budget_ms")),
            measured, _num(ratio, ".3f"),
            _num(r.get("predicted_ms")), _num(r.get("macs"), ",.0f"), _num(r.get("params"), ",.0f"),
            _num(r.get("top1"), ".2f", 100), _num(r.get("top1_holdout"), ".2f", 100),
            _num(r.get("top1_before_finetune"), ".2f", 100),
            _num(r.get("wall_s"), ".0f"), _cell(r.get("ran_on", "–"))]


_SEED_FIELDS = (("measured_ratio", "measured/baseline"), ("top1_val", "top-1 val %"),
                ("top1", "top-1 %"), ("top1_holdout", "top-1 holdout %"))


def across_seeds(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The mean and range (max - min) over seeds of each (model, method, budget ratio, labels,
    fine-tune epochs (distillation after removal included), host) that has measured rows on two seeds or more, in first-seen order.

    Returns dicts with the group's keys (``host``: the measuring CPU's id, or name), ``seeds``
    (sorted) and, per field of ``_SEED_FIELDS`` that every row of the group has, ``{field:
    (mean, range)}``. A difference between two methods smaller than their ranges is
    seed-to-seed noise. Rows of different CPUs are never pooled: a latency ratio holds for
    the host that measured it. A seed that appears twice in a group counts once, its last row."""
    groups: dict[tuple, dict[Any, dict]] = {}
    for r in rows:
        if "infeasible" in r or not isinstance(r.get("seed"), (int, float)):
            continue
        h = r.get("host") if isinstance(r.get("host"), dict) else {}
        host = str(h.get("cpu_id") or h.get("cpu") or "–")
        key = (r.get("model"), r["method"], r.get("budget_ratio"), r.get("labels"),
               trained_epochs(r), host)
        groups.setdefault(key, {})[r["seed"]] = r
    out = []
    for (model, method, ratio, labels, ft, host), by_seed in groups.items():
        if len(by_seed) < 2:
            continue
        summary: dict[str, Any] = {"model": model, "method": method, "budget_ratio": ratio, "labels": labels,
                                   "finetune_epochs": ft, "host": host, "seeds": sorted(by_seed)}
        for field, _ in _SEED_FIELDS:
            values = [r.get(field) if field != "measured_ratio" else _ratio(r) for r in by_seed.values()]
            if all(isinstance(v, (int, float)) for v in values):
                summary[field] = (sum(values) / len(values), max(values) - min(values))
        out.append(summary)
    return out


def seed_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """:func:`across_seeds` of one model's ``rows`` as Markdown lines (none when no group has
    two seeds)."""
    groups = across_seeds(rows)
    if not groups:
        return []

    def cell(g: dict, field: str) -> str:
        if field not in g:
            return "–"
        mean, spread = g[field]
        scale, spec = (1.0, ".3f") if field == "measured_ratio" else (100.0, ".2f")
        return f"{format(mean * scale, spec)} ({format(spread * scale, spec)})"

    lines = ["", "Across seeds: mean (range, max - min). A difference smaller than the ranges "
             "is seed-to-seed noise.", ""]
    lines += _table(("method", "budget ratio", "host", "seeds", *(name for _, name in _SEED_FIELDS)),
                    ["---", "---:", "---", "---", *["---:"] * len(_SEED_FIELDS)],
                    [[_cell(g["method"]), _num(g["budget_ratio"], "g"), _cell(g["host"]),
                      ", ".join(_num(x, "g") for x in g["seeds"]),
                      *(cell(g, f) for f, _ in _SEED_FIELDS)] for g in groups])
    return lines


def _baseline_cells(b: dict[str, Any]) -> list[str]:
    name = f"baseline (unpruned, `{b['teacher']}`)" if b.get("teacher") else "baseline (unpruned)"
    return ([name, "", "", "", "", "", _num(b["measured_ms"]), "1.000",
             _num(b.get("predicted_ms")),
             _num(b.get("macs"), ",.0f"), _num(b.get("params"), ",.0f"),
             _num(b["top1"], ".2f", 100), _num(b.get("top1_holdout"), ".2f", 100)]
            + [""] * 3)


def _model_section(model: str, rows: list[dict], baseline: dict, out: Path,
                   figure: Callable[..., Any]) -> list[str]:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model)
    styles = _styles(rows)
    lines = [f"## {model}", ""]
    lines += _table(_ROW_HEADER, ["---"] * 2 + ["---:"] * 13 + ["---"],
                    [_baseline_cells(baseline), *(_row_cells(r) for r in rows)])
    lines += seed_table(rows)
    infeasible = [r for r in rows if "infeasible" in r]
    if infeasible:
        lines += ["", "Infeasible, so not in the plots:", ""]
        lines += [f"- {r['method']}, seed {_num(r.get('seed'), 'g')}, at "
                  f"{_num(r.get('budget_ms'))} ms: {' '.join(r['infeasible'].split())}"
                  for r in infeasible]
    acc = _save(_plot_accuracy(figure, model, rows, baseline, styles),
                out / f"accuracy_vs_latency_{slug}.png")
    lines += ["", f"![{model}: top-1 accuracy vs measured latency]({acc})", ""]
    predicted = [r for r in rows if "infeasible" not in r and r.get("predicted_ms") is not None]
    if predicted:
        pred = _save(_plot_prediction(figure, model, predicted, baseline, styles),
                     out / f"predicted_vs_measured_{slug}.png")
        lines += [f"![{model}: predicted vs measured latency]({pred})", ""]
    else:
        lines += ["No row has a predicted latency, so there is no prediction plot.", ""]
    run = next((r for r in rows if r["method"] == "edgeprune" and _has_details(r)), None)
    if run is not None:
        lines += [f"### The first edgeprune run ({_num(run.get('budget_ms'))} ms budget, "
                  f"seed {_num(run.get('seed'), 'g')})", ""]
        unit = run.get("pruner_cost_unit", "ms")
        budget = run.get("pruner_budget", run.get("budget_ms"))  # the history ramps to the former
        lines += _run_images(out, figure, run, unit, budget, f"_{slug}", f" ({model})")
    return lines


def _benchmark_section(d: dict[str, Any], out: Path, figure: Callable[..., Any]) -> list[str]:
    lines = [f"# Benchmark report: {d.get('what', 'pruning')}", ""]
    if d.get("host"):
        lines += ["Host: " + ", ".join(f"{k} {_cell(v)}" for k, v in d["host"].items()), ""]
    lines += ["measured/baseline: a row's measured_ratio (the median of its per-round ratios to the "
              "baseline timed beside it) where it has one, else its measured latency over its own "
              "baseline_ms. Top-1 on the test split.", ""]
    models = list(dict.fromkeys(r["model"] for r in d["rows"]))
    for model in models:
        rows = [r for r in d["rows"] if r["model"] == model]
        lines += _model_section(model, rows, d["baselines"][model], out, figure)
    return lines
