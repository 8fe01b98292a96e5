"""The layer map holds: `make lint`'s import contract fails on a wrong-way import, and the
light modules import without torch."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess:
    """lint-imports with the project's contract, on the copy of the package in ``tree``."""
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return subprocess.run([str(LINT), "--no-logo", "--no-cache"], cwd=tree, capture_output=True,
                          text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)})


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed: pip install -e '.[dev]'")
def test_a_wrong_way_import_fails_the_contract_and_main_passes(tmp_path):
    shutil.copytree(ROOT / "edgeprune", tmp_path / "edgeprune",
                    ignore=shutil.ignore_patterns("__pycache__", "*.toml"))
    ok = _lint(tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "KEPT" in ok.stdout
    graph = tmp_path / "edgeprune" / "graph" / "groups.py"  # a low layer reaching up to the pruner
    graph.write_text(graph.read_text() + "\nfrom edgeprune.pruning import config  # noqa\n")
    bad = _lint(tmp_path)
    assert bad.returncode != 0
    assert "BROKEN" in bad.stdout and "edgeprune.graph.groups -> edgeprune.pruning" in bad.stdout, bad.stdout


@pytest.mark.parametrize("module", ["edgeprune", "edgeprune.targets", "edgeprune.types",
                                    "edgeprune.errors", "edgeprune.cli"])
def test_light_modules_import_without_torch(module):
    code = (f"import sys, {module}; bad = sorted(m for m in ('torch', 'numpy', 'onnx', 'ai_edge_litert') "
            "if m in sys.modules); assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_public_names_resolve_lazily():
    code = ("import sys, edgeprune; assert 'torch' not in sys.modules; "
            "from edgeprune import PruneConfig, ExportConfig, Bundle, LatencyProfile, load; "
            "import inspect; assert all(inspect.isfunction(getattr(edgeprune, v)) for v in "
            "('profile', 'measure', 'prune', 'export', 'validate')); assert 'torch' in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
