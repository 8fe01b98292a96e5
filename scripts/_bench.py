"""What the export benchmarks share: the data a committed checkpoint is calibrated and scored on."""

from __future__ import annotations

from edgeprune import data


def calibration_and_test(spec, calib_images: int, test_images: int):
    """Unlabeled calibration batches (100 a batch) from the checkpoint's own data set and its
    labeled test split, both at the checkpoint's input size and normalisation."""
    dname = str(spec.metadata.get("data", "shapes")).split(":")[0]
    calib = data.Batches(data.open(dname, size=spec.input.hw, limit=calib_images), 100,
                         mean=spec.input.mean, std=spec.input.std, shuffle=False)
    test = data.open(f"{dname}:test", labels=True, size=spec.input.hw, limit=test_images)
    return calib, test
