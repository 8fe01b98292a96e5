"""Data-parallel pruning: the same script under ``torchrun --nproc_per_node=2`` (gloo, CPU)
prunes to the same widths as one process with the same seed and global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import edgeprune
from tests.nets import random_batches
from tests.pruning.ddp_worker import DDP_CONFIG, plain_cnn

ROOT = Path(__file__).resolve().parents[2]


def test_two_processes_prune_to_the_same_widths_as_one(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this torch build")
    out = tmp_path / "ddp.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "tests" / "pruning" / "ddp_worker.py"), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads(out.read_text())
    assert ddp["world"] == 2
    single = edgeprune.prune(plain_cnn(), random_batches(), target="macs", budget_ratio=0.5,
                             config=DDP_CONFIG)
    # the gradients are averaged across ranks, and the widths chosen from them agree
    assert ddp["widths"] == single.group_widths_after
    assert ddp["widths"] != single.group_widths_before  # it pruned
    assert ddp["predicted"] <= ddp["budget"]
    assert not torch.distributed.is_initialized()  # the single-process run started no group
