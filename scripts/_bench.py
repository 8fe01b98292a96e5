"""What the export benchmarks share: the committed baselines, and the data a checkpoint is
calibrated and scored on."""

from __future__ import annotations

from pathlib import Path

import edgeprune
from edgeprune import data

ROOT = Path(__file__).resolve().parents[1]


def baseline_checkpoints() -> list[Path]:
    """The committed baselines' checkpoints, sorted by directory name."""
    return sorted((ROOT / "bench" / "baselines").glob("*/model.safetensors"))


def load_with_data(checkpoint: Path, calib_images: int, test_images: int):
    """(model, spec, calibration, test) for a checkpoint: unlabeled calibration batches (100 a
    batch) from its own data set and its labeled test split, both at its input size and
    normalisation."""
    model = edgeprune.load(checkpoint)
    spec = model.edgeprune_spec
    dname = str(spec.metadata.get("data", "shapes")).split(":")[0]
    calib = data.Batches(data.open(dname, size=spec.input.hw, limit=calib_images), 100,
                         mean=spec.input.mean, std=spec.input.std, shuffle=False)
    test = data.open(f"{dname}:test", labels=True, size=spec.input.hw, limit=test_images)
    return model, spec, calib, test
