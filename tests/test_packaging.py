"""An installed (non-editable) edgeprune finds the targets it ships, outside the repository."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_wheel_install_loads_a_shipped_target_outside_the_repository(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    shutil.copytree(ROOT / "edgeprune", src / "edgeprune", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("edgeprune-*.whl"))
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                        str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    shutil.rmtree(src)  # nothing of the source tree is left to find the targets in
    code = ("import edgeprune.targets as t; "
            "print(t.__file__); print(t.load_target('raspberry-pi-4-litert').path); "
            "print(sorted(t.target_names()))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    module, target_path, names = r.stdout.splitlines()
    assert module.startswith(str(site)) and target_path.startswith(str(site)), r.stdout
    assert "host-litert" in names and "raspberry-pi-4-litert" in names


def test_the_agent_runs_from_a_no_deps_install_without_torch(tmp_path):
    """`pip install --no-deps edgeprune` on a device, plus numpy and a runtime: `edgeprune agent`
    must work with torch absent (here: blocked from importing)."""
    src = tmp_path / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    shutil.copytree(ROOT / "edgeprune", src / "edgeprune", ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(site), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    code = ("import sys; sys.modules['torch'] = None; from edgeprune.cli import main; "
            "raise SystemExit(main(['agent', '--stdio']))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, input='{"protocol": 1, "op": "info"}\n',
                       capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(site),
                                                                        "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    reply = json.loads(r.stdout)
    assert reply["ok"] and reply["protocol"] == 1 and "litert" in reply["runtimes"]
