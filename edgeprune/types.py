"""Small frozen value types shared by every layer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from edgeprune.errors import ConfigError

LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: shape of one sample (C, H, W), layout, normalisation, classes.

    ``mean``/``std`` apply to pixel values scaled to [0, 1]: ``x = (pixel/255 - mean) / std``.
    """

    shape: tuple[int, int, int] = (3, 32, 32)
    layout: str = "NCHW"
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) <= 0:
            raise ConfigError(
                f"input shape {self.shape!r} is invalid; expected 3 positive ints (C, H, W)"
            )
        if self.layout not in LAYOUTS:
            raise ConfigError(f"input layout {self.layout!r} is invalid; use one of {LAYOUTS}")
        c = shape[0]
        mean = tuple(float(m) for m in self.mean)
        std = tuple(float(s) for s in self.std)
        if len(mean) != c or len(std) != c:
            raise ConfigError(
                f"mean {mean} / std {std} must have one value per channel ({c} channels)"
            )
        if any(not math.isfinite(s) or s <= 0 for s in std):
            raise ConfigError(f"std {std} must be finite and > 0")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def hw(self) -> tuple[int, int]:
        return self.shape[1], self.shape[2]

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "layout": self.layout,
            "mean": list(self.mean),
            "std": list(self.std),
            "class_names": list(self.class_names),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        known = {"shape", "layout", "mean", "std", "class_names"}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown input-spec keys {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class LatencyStats:
    """Latency of repeated runs of one artifact, in milliseconds.

    With several passes (``passes > 1``), the numbers are those of the fastest pass (lowest
    median): interference from other processes only ever slows a pass down.
    ``pass_medians_ms`` keeps every pass's median, so a noisy machine is visible.
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float
    runs: int
    warmup: int
    runtime: str
    runtime_version: str
    threads: int
    samples_ms: tuple[float, ...] = field(default=(), repr=False)
    passes: int = 1
    pass_medians_ms: tuple[float, ...] = ()
    device: dict[str, Any] | None = field(default=None, repr=False)  # the agent's info, if remote

    @property
    def pass_spread(self) -> float:
        """Slowest over fastest pass median, minus 1 (0.0 with one pass)."""
        m = self.pass_medians_ms
        return max(m) / min(m) - 1 if len(m) > 1 else 0.0

    def __str__(self) -> str:
        s = (
            f"{self.runtime} {self.runtime_version} ({self.threads} thread"
            f"{'s' if self.threads != 1 else ''}): median {self.median_ms:.3f} ms, "
            f"p10 {self.p10_ms:.3f}, p90 {self.p90_ms:.3f}, IQR {self.iqr_ms:.3f}, n={self.runs}"
        )
        if self.passes > 1:
            s += f" (fastest of {self.passes} passes; spread {100 * self.pass_spread:.1f}%)"
        if self.device is not None:
            s += f" on {self.device.get('cpu')} ({self.device.get('machine')}, {self.device.get('hostname')})"
        return s

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_ms": self.median_ms,
            "p10_ms": self.p10_ms,
            "p90_ms": self.p90_ms,
            "iqr_ms": self.iqr_ms,
            "runs": self.runs,
            "warmup": self.warmup,
            "runtime": self.runtime,
            "runtime_version": self.runtime_version,
            "threads": self.threads,
            "passes": self.passes,
            "pass_medians_ms": list(self.pass_medians_ms),
            **({"device": self.device} if self.device is not None else {}),
        }


@dataclass(frozen=True)
class Progress:
    """One tick of a long loop, passed to ``on_progress`` callbacks.

    ``stage`` names the loop ("train", "eval", ...), ``step`` counts from 1 to ``total``, and
    ``metrics`` holds the loop's current numbers (loss, accuracy, ...).
    """

    stage: str
    step: int
    total: int
    metrics: dict[str, float | str] = field(default_factory=dict)
