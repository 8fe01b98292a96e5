"""write_report renders real PNGs with matplotlib and a Markdown file that links each of them;
a bad run fails with a one-line ConfigError naming the path; `edgeprune report` wraps it."""

import json
import re
import subprocess
import sys

import pytest
from PIL import Image

from edgeprune.cli import _prune_plots, main
from edgeprune.errors import ConfigError, MissingDependencyError
from edgeprune.reporting import across_seeds, write_report

pytest.importorskip("matplotlib", reason="reports need matplotlib: pip install 'edgeprune[report]'")

PLOT_PX = (770, 495)  # 7 x 4.5 inches at 110 dpi
TRAINING_PX = (770, 770)  # 7 x 7 inches at 110 dpi

WIDTHS_BEFORE = {"conv1": [3, 16], "layer1.conv": [16, 32], "fc": [32, 10]}
WIDTHS_AFTER = {"conv1": [3, 8], "layer1.conv": [8, 16], "fc": [16, 10]}
HISTORY = [
    {"step": 0, "lr": 0.01, "budget_t": 1.0, "predicted": [1.0, 1.0], "sparsity": 0.0},
    {"step": 10, "lr": 0.01, "budget_t": 0.8, "kd": 0.9, "feat": 1e-3, "ml": 0.2,
     "predicted": [0.85, 0.9], "sparsity": 0.2},
    {"step": 20, "lr": 0.005, "budget_t": 0.6, "kd": 0.5, "feat": 5e-4, "ml": 0.1,
     "predicted": [0.62, 0.65], "sparsity": 0.4},
    {"step": 30, "lr": 0.001, "budget_t": 0.5, "kd": 0.4, "feat": 4e-4, "ml": 0.05,
     "predicted": [0.5, 0.52], "sparsity": 0.5},
]


def prune_report(**over):
    return {"target": "host-litert", "cost_unit": "ms", "cost_source": "measured",
            "baseline_predicted": 1.0, "predicted": 0.5, "budget": 0.5,
            "group_widths_before": {"conv1": 16, "layer1.conv": 32},
            "group_widths_after": {"conv1": 8, "layer1.conv": 16},
            "widths_before": WIDTHS_BEFORE, "widths_after": WIDTHS_AFTER,
            "params_before": 12_000, "params_after": 3_500, "macs_before": 4_000_000,
            "macs_after": 1_100_000, "history": HISTORY, **over}


INFEASIBLE = "no widths fit 0.2 ms at round_to 8"


def benchmark():
    common = {"model": "resnet20", "labels": False, "finetune_epochs": 0, "seed": 0,
              "budget_ratio": 0.5, "budget_ms": 0.5, "baseline_ms": 1.0, "wall_s": 12.0,
              "ran_on": "cpu"}
    return {
        "what": "a small benchmark", "host": {"cpu": "x86_64"},
        "rows": [
            {**common, "method": "edgeprune", "measured_ms": 0.48, "predicted_ms": 0.5,
             "macs": 1_100_000, "params": 3_500, "top1": 0.91, "top1_before_finetune": None,
             "history": HISTORY, "widths_before": WIDTHS_BEFORE, "widths_after": WIDTHS_AFTER},
            {**common, "method": "tp-l1", "labels": True, "finetune_epochs": 2,
             "measured_ms": 0.52, "predicted_ms": None, "macs": 1_200_000, "params": 3_700,
             "top1": 0.9, "top1_before_finetune": 0.4},
            {**common, "method": "tp-taylor", "budget_ratio": 0.2, "budget_ms": 0.2,
             "infeasible": INFEASIBLE},
        ],
        "baselines": {"resnet20": {"measured_ms": 1.0, "predicted_ms": 1.02, "top1": 0.93,
                                   "macs": 4_000_000, "params": 12_000}},
    }


def write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def linked_pngs(report):
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())


def assert_png(path, size):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        assert im.size == size, (path.name, im.size)


def test_prune_report(tmp_path):
    write(tmp_path / "prune_report.json", prune_report())
    report = write_report(tmp_path)
    assert report == tmp_path / "report.md"
    assert linked_pngs(report) == ["widths.png", "training.png"]
    assert_png(tmp_path / "widths.png", PLOT_PX)
    assert_png(tmp_path / "training.png", TRAINING_PX)
    text = report.read_text()
    assert "| predicted cost (ms) | 1 | 0.5 |" in text
    assert "| params | 12,000 | 3,500 |" in text
    assert "| layer1.conv | 32 | 16 |" in text
    assert "Residual blocks removed" not in text
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries
    write(tmp_path / "prune_report.json", prune_report(removable_blocks=["layer1.0", "layer1.1"],
                                                        removed_blocks=["layer1.1"]))
    assert "Residual blocks removed: 1 of 2 (layer1.1)." in write_report(tmp_path).read_text()


def test_many_layers_get_a_taller_horizontal_chart(tmp_path):
    before = {f"l{i}": [8, 16] for i in range(40)}
    after = {f"l{i}": [8, 8] for i in range(40)}
    write(tmp_path / "prune_report.json", prune_report(widths_before=before, widths_after=after))
    write_report(tmp_path)
    assert_png(tmp_path / "widths.png", (770, 880))  # 1.2 + 0.17 * 40 = 8 inches tall


def test_benchmark_report(tmp_path):
    bench = write(tmp_path / "pruning.json", benchmark())
    out = tmp_path / "out"
    report = write_report(bench, out)  # a file, with the report elsewhere
    assert report == out / "report.md"
    names = ["accuracy_vs_latency_resnet20.png", "predicted_vs_measured_resnet20.png",
             "widths_resnet20.png", "training_resnet20.png"]
    assert linked_pngs(report) == names
    assert sorted(p.name for p in out.glob("*.png")) == sorted(names)
    for name in names:
        assert_png(out / name, TRAINING_PX if name.startswith("training") else PLOT_PX)
    text = report.read_text()
    assert INFEASIBLE in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| tp-l1 |"))
    assert row.split(" | ")[1:4] == ["yes", "2", "0"] and "40.00" in row and "0.520" in row
    base = next(ln for ln in text.splitlines() if ln.startswith("| baseline"))
    assert "| 1 | 1.000 | 1.02 | 4,000,000 | 12,000 | 93.00 |" in base


def test_both_files_in_one_directory(tmp_path):
    write(tmp_path / "prune_report.json", prune_report())
    write(tmp_path / "pruning.json", benchmark())
    report = write_report(tmp_path)
    assert len(linked_pngs(report)) == 6
    assert all((tmp_path / n).is_file() for n in linked_pngs(report))


def test_a_directory_without_a_run_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="has no prune_report.json or pruning.json") as e:
        write_report(tmp_path)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="does not exist"):
        write_report(tmp_path / "nope")


def test_malformed_json_is_refused(tmp_path):
    (tmp_path / "prune_report.json").write_text('{"target": "host-litert",')
    with pytest.raises(ConfigError, match="is not valid JSON") as e:
        write_report(tmp_path)
    assert str(tmp_path / "prune_report.json") in str(e.value)
    assert not (tmp_path / "report.md").exists()


@pytest.mark.parametrize("name, obj, needles", [
    ("prune_report.json", {k: v for k, v in prune_report().items() if k != "history"},
     ["no 'history'", "edgeprune prune"]),
    ("prune_report.json", prune_report(budget="0.5"), ["'budget' is '0.5', not a number"]),
    ("prune_report.json", prune_report(widths_after={"conv1": [3, 8]}), ["different layers"]),
    ("prune_report.json", prune_report(history=[{"step": 0, "budget_t": 1.0, "predicted": []}]),
     ["history[0]", "one per student"]),
    ("pruning.json", [1, 2], ["is a list, not a JSON object"]),
    ("pruning.json", {**benchmark(), "baselines": {}}, ["rows[0]", "'resnet20'", "baselines"]),
    ("pruning.json", {**benchmark(), "rows": [{"model": "resnet20", "method": "tp-l1"}]},
     ["rows[0]", "no 'budget_ms'", "no 'measured_ms'", "no 'top1'"]),
])
def test_missing_or_wrong_keys_are_named(tmp_path, name, obj, needles):
    write(tmp_path / name, obj)
    with pytest.raises(ConfigError) as e:
        write_report(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / name) in msg and "\n" not in msg
    for n in needles:
        assert n in msg, msg


def run(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(list(argv)))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_cli_report(capsys, tmp_path):
    write(tmp_path / "prune_report.json", prune_report())
    code, out, err = run(capsys, "report", str(tmp_path))
    assert code == 0, err
    assert out.splitlines() == [f"wrote {tmp_path / 'report.md'}", "  widths.png", "  training.png"]


def test_cli_report_on_an_empty_directory(capsys, tmp_path):
    code, out, err = run(capsys, "report", str(tmp_path))
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and str(tmp_path) in lines[0], err


def test_without_matplotlib_the_report_says_how_to_get_it(monkeypatch, capsys, tmp_path):
    write(tmp_path / "prune_report.json", prune_report())
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if absent
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgeprune\[report\]'"):
        write_report(tmp_path)
    _prune_plots(tmp_path)  # what `edgeprune prune` does at its end
    out = capsys.readouterr().out.strip()
    assert "skipped" in out and "edgeprune[report]" in out and f"edgeprune report {tmp_path}" in out
    assert not (tmp_path / "report.md").exists()


def test_reports_need_no_torch(tmp_path):
    write(tmp_path / "prune_report.json", prune_report())
    code = ("import sys; from edgeprune.reporting import write_report; "
            f"write_report({str(tmp_path)!r}); assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "training.png").is_file()


def test_accuracy_axis_is_the_ratio_to_each_rows_own_baseline_when_rows_carry_it():
    """Rows merged from runs whose baselines measured differently (a host's level drifts)
    are placed by measured / own baseline; without baseline_ms the axis stays in ms."""
    from matplotlib.figure import Figure

    from edgeprune.reporting import _plot_accuracy

    rows = [{"model": "m", "method": "a", "measured_ms": 0.5, "baseline_ms": 1.0, "top1": 0.9,
             "budget_ms": 0.5, "budget_ratio": 0.5},
            {"model": "m", "method": "a", "measured_ms": 0.6, "baseline_ms": 1.2, "top1": 0.8,
             "budget_ms": 0.6, "budget_ratio": 0.5}]
    styles = {"a": ("#1f77b4", "o")}
    ax = _plot_accuracy(Figure, "m", rows, {"measured_ms": 1.2, "top1": 0.95}, styles).axes[0]
    assert "ratio" in ax.get_xlabel()
    points = [ln for ln in ax.get_lines() if ln.get_label() == "a"][0]
    assert list(points.get_xdata()) == [0.5, 0.5]
    star = [ln for ln in ax.get_lines() if ln.get_label() == "baseline (unpruned)"][0]
    assert list(star.get_xdata()) == [1.0]
    ms = _plot_accuracy(Figure, "m", [{k: v for k, v in r.items() if k != "baseline_ms"} for r in rows],
                        {"measured_ms": 1.2, "top1": 0.95}, styles).axes[0]
    assert ms.get_xlabel() == "measured latency (ms)"
    # a benchmark row's own side-by-side ratio (median of per-round ratios) wins over ms / ms
    rows[1]["measured_ratio"] = 0.45
    ax = _plot_accuracy(Figure, "m", rows, {"measured_ms": 1.2, "top1": 0.95}, styles).axes[0]
    points = [ln for ln in ax.get_lines() if ln.get_label() == "a"][0]
    assert list(points.get_xdata()) == [0.5, 0.45]
    from edgeprune.reporting import _ROW_HEADER, _row_cells

    cells = dict(zip(_ROW_HEADER, _row_cells(rows[1]), strict=True))
    assert cells["measured/baseline"] == "0.450" and cells["budget ratio"] == "0.5"


@pytest.mark.parametrize("ft, distill, shown", [(0, 8, "8"), (8, None, "8"), (2, 4, "6"), (None, None, "–")])
def test_distillation_after_removal_counts_as_fine_tuning_in_the_report(ft, distill, shown):
    """A row that distilled its pruned model trained it after pruning, without labels: the
    report must not print 0 fine-tune epochs for it (the bench's printout counts it too)."""
    from edgeprune.reporting import _ROW_HEADER, _row_cells

    row = {"model": "m", "method": "edgeprune: + distill 8", "finetune_epochs": ft,
           "distill_epochs": distill, "measured_ms": 0.5, "budget_ms": 0.5, "top1": 0.9}
    assert dict(zip(_ROW_HEADER, _row_cells(row), strict=True))["fine-tune epochs"] == shown


def test_the_holdout_top1_is_a_column_where_rows_carry_it(tmp_path):
    b = benchmark()
    b["rows"][0]["top1_holdout"] = 0.9234
    b["baselines"]["resnet20"]["top1_holdout"] = 0.9412
    lines = write_report(write(tmp_path / "pruning.json", b), tmp_path / "out").read_text().splitlines()
    header = next(ln for ln in lines if ln.startswith("| method |")).split(" | ")
    col = header.index("top-1 holdout %")

    def cells(start: str) -> list[str]:
        line = next(ln for ln in lines if ln.startswith(start)).split(" | ")
        assert len(line) == len(header)
        return line

    assert cells("| edgeprune |")[col] == "92.34"
    assert cells("| baseline")[col] == "94.12"
    assert cells("| tp-l1 |")[col] == "–"  # a row from before the holdout


def test_the_baseline_row_names_its_teacher_where_the_benchmark_records_it(tmp_path):
    b = benchmark()
    text = write_report(write(tmp_path / "a.json", b), tmp_path / "a").read_text()
    assert "| baseline (unpruned) |" in text  # files from before --teacher
    b["baselines"]["resnet20"]["teacher"] = "resnet20-shapes-e40"
    text = write_report(write(tmp_path / "b.json", b), tmp_path / "b").read_text()
    assert "| baseline (unpruned, `resnet20-shapes-e40`) |" in text
    b["baselines"]["resnet20"]["teacher"] = 40
    with pytest.raises(ConfigError, match="teacher"):
        write_report(write(tmp_path / "c.json", b), tmp_path / "c")


def test_seeds_are_summarised_as_mean_and_range_never_pooling_models_or_hosts(tmp_path):
    b = benchmark()
    xeon, epyc = {"cpu": "Xeon", "cpu_id": "GenuineIntel family 6"}, {"cpu": "AMD EPYC"}
    base = {**b["rows"][0], "host": xeon}
    b["rows"] += [
        {**base, "seed": 0, "top1": 0.95, "measured_ratio": 0.40},  # replaced by the later seed 0
        {**base, "seed": 1, "top1": 0.92, "measured_ratio": 0.50, "top1_val": 0.93},
        {**base, "seed": 2, "top1": 0.90, "measured_ratio": 0.46, "top1_val": 0.94},
        {**base, "seed": 0, "top1": 0.91, "measured_ratio": 0.48, "top1_val": 0.95},
        {**base, "seed": 3, "infeasible": INFEASIBLE},  # not a measurement
        {**base, "seed": 1, "host": epyc, "top1": 0.5},  # one seed on that host: no group
        {**base, "seed": 1, "model": "resnet56", "top1": 0.5},  # one seed of that model
    ]
    b["baselines"]["resnet56"] = b["baselines"]["resnet20"]
    (g,) = across_seeds(b["rows"])  # the resnet56 or EPYC seed 1 pooled in would replace seed 1
    assert (g["model"], g["method"], g["budget_ratio"], g["host"], g["seeds"]) == \
        ("resnet20", "edgeprune", 0.5, "GenuineIntel family 6", [0, 1, 2])
    assert g["top1"] == pytest.approx((0.91, 0.02)) and g["top1_val"] == pytest.approx((0.94, 0.02))
    assert g["measured_ratio"] == pytest.approx((0.48, 0.04))
    assert "top1_holdout" not in g  # no row of the group has it
    text = write_report(write(tmp_path / "pruning.json", b), tmp_path / "out").read_text()
    row = next(ln for ln in text.splitlines() if ln.startswith("| edgeprune | 0.5 |"))
    assert row == ("| edgeprune | 0.5 | GenuineIntel family 6 | 0, 1, 2 | 0.480 (0.040) | "
                   "94.00 (2.00) | 91.00 (2.00) | – |")
    assert across_seeds(benchmark()["rows"]) == [] and "Across seeds" not in \
        write_report(write(tmp_path / "one.json", benchmark()), tmp_path / "one").read_text()
