"""scripts/_bench.py: a result file names the commit that measured it, and a benchmark refuses to
run another checkout's edgeprune (its results would describe other code)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import _bench  # noqa: E402


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout: no commit to name")
def test_provenance_names_this_checkouts_commit():
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    doc = _bench.provenance("x", "bench_x.py", ["--quick"])
    assert re.fullmatch(re.escape(head) + r"(\+dirty)?", doc["commit"])
    assert doc["command"] == "python scripts/bench_x.py --quick"


def test_a_benchmark_refuses_another_checkouts_edgeprune(tmp_path):
    other = tmp_path / "other" / "edgeprune" / "__init__.py"
    other.parent.mkdir(parents=True)
    other.write_text("")
    with pytest.raises(SystemExit, match=re.escape(f"import edgeprune from {tmp_path / 'other'}") + ".*"
                       + re.escape(f"PYTHONPATH={ROOT}")):
        _bench.check_checkout(other)
    _bench.check_checkout()  # the edgeprune this test imports is this checkout's
