"""The README's Python blocks run as written, in order, as one plain script (no `__main__`
guard), from a directory that holds the repository's `bench/` like a checkout does."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTINUES = "# continues the block"


def readme_scripts() -> list[str]:
    """Blocks grouped into scripts: a block that starts with "# continues the block(s)
    above" extends the script before it; any other block must run alone."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    scripts: list[str] = []
    for b in blocks:
        if b.startswith(CONTINUES):
            assert scripts, "the first block cannot continue another"
            scripts[-1] += "\n" + b
        else:
            scripts.append(b)
    return scripts


def test_the_readme_has_blocks_and_says_what_they_continue():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) >= 3
    assert not blocks[0].startswith(CONTINUES)
    assert len(readme_scripts()) >= 1


@pytest.mark.slow
@pytest.mark.parametrize("i", range(len(readme_scripts())))
def test_readme_block_runs_as_written(tmp_path, i):
    script = tmp_path / f"readme_{i}.py"
    script.write_text(readme_scripts()[i])
    (tmp_path / "bench").symlink_to(ROOT / "bench")
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    # what the blocks print: accuracy, latency stats, a prediction, the pruning result, the
    # validation table
    assert "top-1" in r.stdout and "median" in r.stdout, r.stdout[-2000:]
    if "edgeprune.prune(" in readme_scripts()[i]:
        assert "pruned for host-litert" in r.stdout, r.stdout[-2000:]
        # every fp32 artifact passes; the int8 one may miss its 99% agreement gate after one
        # epoch of pruning (98.8% seen), which the README says
        rows = [ln.rstrip() for ln in r.stdout.splitlines() if ln.startswith("model")]
        assert len(rows) >= 4 and r.stdout.rstrip().endswith(("OK", "FAILED")), r.stdout[-2000:]
        assert not [ln for ln in rows if "  fail" in ln and not ln.startswith("model_int8")], rows
        assert [ln for ln in rows if ln.startswith(("model.tflite", "model.onnx")) and "  pass" in ln], rows
