"""What a bundle holds, typed: :class:`Bundle` (its directory, artifacts and model.json) and
per :class:`Artifact` its I/O (:class:`ArtifactIO`), the export-time parity check
(:class:`Parity`) and the export host's latency (:class:`HostLatency`).

``to_dict`` gives the model.json form (schema_version 1; keys whose value is None are left
out, as model.json always had them); ``from_dict`` reads it back and rejects unknown keys.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edgeprune.errors import ConfigError, ExportError

T = TypeVar("T")


def _plain(obj: Any) -> dict[str, Any]:
    """A dataclass as a dict without None values, nested dataclasses included."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if v is None:
            continue
        if dataclasses.is_dataclass(v):
            v = _plain(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def _typed(cls: type[T], d: Any, where: str) -> T:
    if not isinstance(d, dict):
        raise ExportError(f"{where} must be an object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - names)
    if unknown:
        raise ExportError(f"{where} has unknown key(s) {unknown}; known: {sorted(names)}")
    return cls(**d)


@dataclass(frozen=True)
class Quantization:
    """int8 tensor parameters: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class TensorIO:
    name: str | None = None
    shape: tuple[int, ...] | None = None
    layout: str | None = None  # "NHWC" (TFLite) or "NCHW" (ONNX, CoreML)
    dtype: str = "float32"
    quantization: Quantization | None = None
    range: str | None = None  # an int8 output's range: "top2" or "full"
    range_note: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> TensorIO:
        t = _typed(cls, d, where)
        q = t.quantization
        return dataclasses.replace(
            t, shape=tuple(int(s) for s in t.shape) if t.shape is not None else None,
            quantization=_typed(Quantization, q, f"{where}.quantization") if q is not None else None)


@dataclass(frozen=True)
class ArtifactIO:
    input: TensorIO
    output: TensorIO
    quantization_note: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> ArtifactIO:
        io = _typed(cls, d, where)
        return dataclasses.replace(io, input=TensorIO.from_dict(d["input"], f"{where}.input"),
                                   output=TensorIO.from_dict(d["output"], f"{where}.output"))


@dataclass(frozen=True)
class Parity:
    """The export-time check on this host: max |logit - PyTorch logit| and top-1 agreement on
    ``images`` inputs, or ``status`` "not checked" and the ``reason``."""

    images: int | None = None
    max_abs: float | None = None
    top1_agreement: float | None = None
    runtime: str | None = None
    runtime_version: str | None = None
    status: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class HostLatency:
    """Latency on the machine that exported the bundle (not the device), or why none."""

    median_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    runs: int | None = None
    threads: int | None = None
    runtime: str | None = None
    runtime_version: str | None = None
    note: str | None = None
    status: str | None = None
    reason: str | None = None
    # how it was timed: the host target's protocol, as `edgeprune measure` times (the fastest
    # of its passes, each a fresh session), and every pass's median
    protocol: str | None = None
    pass_medians_ms: list[float] | None = None


@dataclass(frozen=True)
class Artifact:
    format: str
    file: str  # relative to the bundle directory
    runtime: str
    size_bytes: int
    export_s: float
    sha256: str
    io: ArtifactIO
    parity: Parity
    host_latency: HostLatency
    int8_ptq: tuple[str, ...] | None = None  # tflite-int8: the label-free steps before quantisation

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "artifact") -> Artifact:
        a = _typed(cls, d, where)
        ptq = d.get("int8_ptq")
        return dataclasses.replace(a, io=ArtifactIO.from_dict(d["io"], f"{where}.io"),
                                   int8_ptq=tuple(ptq) if isinstance(ptq, list) else ptq,
                                   parity=_typed(Parity, d["parity"], f"{where}.parity"),
                                   host_latency=_typed(HostLatency, d["host_latency"],
                                                       f"{where}.host_latency"))


@dataclass(frozen=True)
class Bundle:
    """An exported bundle: ``path`` (its directory), its artifacts, and ``model_json`` (the
    whole model.json, of which ``artifacts`` is the typed form)."""

    path: Path
    artifacts: tuple[Artifact, ...]
    model_json: dict[str, Any]

    @property
    def source_checkpoint(self) -> Path:
        """The PyTorch checkpoint the artifacts were converted from (in the bundle)."""
        return self.path / self.model_json["source_checkpoint"]["file"]

    def artifact(self, fmt: str) -> Artifact:
        for a in self.artifacts:
            if a.format == fmt:
                return a
        raise ConfigError(f"bundle {str(self.path)!r} has no {fmt!r} artifact; it has "
                          f"{[a.format for a in self.artifacts]}")

    def to_dict(self) -> dict[str, Any]:
        """model.json's content."""
        return {**self.model_json, "artifacts": [a.to_dict() for a in self.artifacts]}

    def __str__(self) -> str:
        lines = [f"bundle {self.path}", f"{'format':12} {'file':20} {'KiB':>7} {'export s':>8} "
                 f"{'max|d|':>9} {'agree':>7} {'host ms':>8}"]
        for a in self.artifacts:
            p, lat = a.parity, a.host_latency
            diff = f"{p.max_abs:.2e}" if p.max_abs is not None else "-"
            agree = f"{100 * p.top1_agreement:.1f}%" if p.top1_agreement is not None else "-"
            ms = f"{lat.median_ms:.3f}" if lat.median_ms is not None else "-"
            lines.append(f"{a.format:12} {a.file:20} {a.size_bytes / 1024:7.0f} {a.export_s:8.1f} "
                         f"{diff:>9} {agree:>7} {ms:>8}")
        return "\n".join(lines)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Bundle:
        p = Path(path)
        mj = p / "model.json"
        if not mj.is_file():
            raise ExportError(f"{str(p)!r} is not a complete edgeprune bundle (no model.json); re-run "
                              "edgeprune export")
        try:
            d = json.loads(mj.read_text())
            arts = tuple(Artifact.from_dict(a, f"{mj.name} artifact {i}")
                         for i, a in enumerate(d["artifacts"]))
            d["source_checkpoint"]["file"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ExportError(f"{str(mj)!r} is malformed: {type(e).__name__}: {e}") from e
        return cls(p, arts, d)
