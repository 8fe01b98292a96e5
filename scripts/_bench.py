"""What the benchmarks share: the provenance every result file starts with, the committed
baselines, and the data a checkpoint is calibrated and scored on."""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import edgeprune
from edgeprune import data
from edgeprune.profiling.latency import host_identity

ROOT = Path(__file__).resolve().parents[1]


def provenance(benchmark: str, script: str, argv: list[str] | None) -> dict:
    """The head of a result file: what ran (the command line), when, on which host, with which
    edgeprune, and whether timing was pinned (``$EDGEPRUNE_TIMING_CPUS``)."""
    args = argv if argv is not None else sys.argv[1:]
    return {"benchmark": benchmark, "command": " ".join(["python", f"scripts/{script}", *args]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": host_identity(), "edgeprune": edgeprune.__version__,
            "timing_cpus": os.environ.get("EDGEPRUNE_TIMING_CPUS") or "not pinned"}


def baseline_checkpoints() -> list[Path]:
    """The committed baselines' checkpoints, sorted by directory name."""
    return sorted((ROOT / "bench" / "baselines").glob("*/model.safetensors"))


def load_with_data(checkpoint: Path, calib_images: int, test_images: int, split: str = "test"):
    """(model, spec, calibration, test) for a checkpoint: unlabeled calibration batches (100 a
    batch) from its own data set and its labeled ``split`` (test, or val to make a choice on),
    both at its input size and normalisation."""
    model = edgeprune.load(checkpoint)
    spec = model.edgeprune_spec
    dname = str(spec.metadata.get("data", "shapes")).split(":")[0]
    calib = data.Batches(data.open(dname, size=spec.input.hw, limit=calib_images), 100,
                         mean=spec.input.mean, std=spec.input.std, shuffle=False)
    test = data.open(f"{dname}:{split}", labels=True, size=spec.input.hw, limit=test_images)
    return model, spec, calib, test
