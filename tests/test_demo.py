"""`make demo` on a machine that measured none of the committed profiles, with a budget below
what pruning can reach there: it profiles the machine it runs on, lifts the budget to just
above the floor and says so, and prints a short summary with no third-party noise."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import demo  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("Warning", "WARNING", "INFO:", "I0000", "W1201", "Failed to load", "Traceback")


def _foreign(path: Path, out: Path) -> None:
    d = json.loads(path.read_text())
    d["host"] = {**d["host"], "cpu": "Intel(R) Xeon(R) Imaginary CPU @ 2.00GHz",
                 "cpu_id": "GenuineIntel family 6 model 85 stepping 7", "isa": ["avx", "avx2", "fma"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(d))


@pytest.mark.slow
def test_demo_on_another_cpu_with_a_budget_below_the_floor(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "demo.py", repo / "scripts" / "demo.py")
    shutil.copytree(ROOT / "bench" / "baselines" / "resnet20-shapes",
                    repo / "bench" / "baselines" / "resnet20-shapes")
    for p in (ROOT / "profiles").rglob("*.json"):  # every committed profile: another machine's
        _foreign(p, repo / p.relative_to(ROOT))
    out = repo / "out" / "demo"
    _foreign(ROOT / "profiles" / "host-litert" / "resnet20.json", out / "profile-host-litert.json")

    r = subprocess.run([sys.executable, "scripts/demo.py", "--quick", "--budget", "0.2"], cwd=repo,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    lines = (r.stdout + r.stderr).splitlines()
    assert len(lines) < 60, r.stdout
    assert not [ln for ln in lines if any(k in ln for k in NOISE)], r.stdout + r.stderr
    assert "earlier profile not used" in r.stdout and "Imaginary CPU" in r.stdout
    assert "0.2x is below the smallest this machine can reach by channel pruning" in r.stdout
    prof = json.loads((out / "profile-host-litert.json").read_text())
    assert "Imaginary" not in prof["host"]["cpu"]  # re-measured here
    result = json.loads((out / "prune_result.json").read_text())
    assert result["predicted"] <= result["budget"]
    assert result["budget"] > 0.2 * result["baseline_predicted"]
    for f in ("pruned.safetensors", "bundle/model.json", "bundle/model.tflite", "bundle/validation.json"):
        assert (out / f).is_file(), f
        assert f.split("/")[-1] in r.stdout  # the summary says where every file went


@pytest.mark.parametrize("requested, chosen, says", [
    (0.5, 0.5, None),                    # reachable with room: pruned to as asked
    (0.46, 0.4725, "0.46x is less than 1.05x the smallest"),  # above the floor, too close to it
    (0.3, 0.4725, "0.3x is below the smallest"),
])
def test_the_demo_budget_is_lifted_only_near_the_floor_and_says_why(requested, chosen, says):
    ratio, note = demo.demo_budget(requested, baseline_ms=2.0, floor_ms=0.9)  # floor 0.45x
    assert ratio == pytest.approx(chosen)
    if says is None:
        assert note == "0.5x of the predicted baseline 2.000 ms"
    else:
        assert says in note and "(0.900 ms, 0.45x), so 1.05x that" in note
        assert "below" not in note or requested < 0.45
