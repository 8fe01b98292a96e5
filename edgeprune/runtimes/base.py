from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from edgeprune.agent import sample_ms
from edgeprune.errors import RuntimeAdapterError
from edgeprune.types import LatencyStats


class Session(ABC):
    """A loaded artifact. ``run`` maps float32 NCHW input to float32 output."""

    runtime: str
    runtime_version: str
    threads: int
    input_shape: tuple[int, ...]  # NCHW, as the caller feeds it
    input_name: str
    output_name: str

    @abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _invoke_prepared(self) -> None:
        """Run once on the input set by the last ``_prepare``; used for timing."""

    @abstractmethod
    def _prepare(self, x: np.ndarray) -> None: ...

    def run_batched(self, x: np.ndarray) -> np.ndarray:
        """Run a batch larger than the artifact's fixed batch, one artifact batch at a time."""
        b = self.input_shape[0]
        if b <= 0 or len(x) == b:
            return self.run(x)
        if len(x) % b:
            raise RuntimeAdapterError(f"batch of {len(x)} is not a multiple of the artifact's batch {b}")
        return np.concatenate([self.run(x[i:i + b]) for i in range(0, len(x), b)])

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        want = self.input_shape
        if x.ndim != len(want) or any(w > 0 and w != s for w, s in zip(want, x.shape, strict=True)):
            raise RuntimeAdapterError(
                f"{self.runtime}: input shape {tuple(x.shape)} does not match the artifact's {want} (NCHW)"
            )
        return x


def time_session(session: Session, x: np.ndarray, *, warmup: int = 10, runs: int = 50) -> LatencyStats:
    """Latency of ``session`` on input ``x``: ``warmup`` untimed runs, then ``runs`` timed ones."""
    if warmup < 0 or runs < 1:
        raise RuntimeAdapterError(f"warmup={warmup}, runs={runs} is invalid; need warmup >= 0, runs >= 1")
    session._prepare(session._check(x))
    try:
        samples = sample_ms(session._invoke_prepared, warmup, runs)
    except ValueError as e:
        raise RuntimeAdapterError(f"{session.runtime}: {e}") from None
    p10, p25, p50, p75, p90 = np.percentile(samples, [10, 25, 50, 75, 90])
    return LatencyStats(float(p50), float(p10), float(p90), float(p75 - p25), runs, warmup,
                        session.runtime, session.runtime_version, session.threads,
                        tuple(float(s) for s in samples))
