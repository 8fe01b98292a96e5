"""Run exported artifacts on the real aarch64 builds of LiteRT and ONNX Runtime, under QEMU.

``scripts/make-arm64-runtime.sh`` builds the runtime into a cache directory: QEMU 10 user mode,
a Debian arm64 Python 3.11 sysroot and aarch64 wheels of numpy, ai-edge-litert and onnxruntime
pinned to the host's versions. :func:`run_artifact` runs a ``.tflite`` (LiteRT Interpreter,
1 thread, XNNPACK as by default) or ``.onnx`` (ONNX Runtime CPU, 1 thread) there and returns its
raw outputs, so they can be compared with PyTorch and with the x86 runtimes.

This checks that the ARM kernels (NEON, dotprod) compute the same numbers; it says nothing
about speed. Timings under emulation mean nothing for a device and are never measured here.

Data goes to the emulated process as ``.npy`` files (``allow_pickle=False`` both ways). The
runner refuses to run unless ``platform.machine()`` is ``aarch64``, so nothing can silently
run on the host instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeprune.errors import ConfigError, MissingDependencyError, RuntimeAdapterError

__all__ = ["CPUS", "DEFAULT_CPU", "available", "run_artifact", "run_artifacts", "run_like_host",
           "runtime_dir", "versions"]

#: QEMU CPU models checked to compute correctly: neoverse-n1 (asimd + dotprod, the default)
#: and cortex-a72 (plain NEON, e.g. a Raspberry Pi 4).
CPUS = ("neoverse-n1", "cortex-a72")
DEFAULT_CPU = "neoverse-n1"
SUFFIXES = (".tflite", ".onnx")
_BUILD_HINT = "run scripts/make-arm64-runtime.sh"
# the script the aarch64 Python runs: standard library, numpy and the runtime only (no edgeprune)
RUNNER = Path(__file__).with_name("arm64_runner.py")
_STDERR_LINES = 8


def runtime_dir() -> Path:
    """Where ``scripts/make-arm64-runtime.sh`` builds by default:
    ``$EDGEPRUNE_ARM64_CACHE``, else ``~/.cache/edgeprune/arm64`` (the same rule as the script)."""
    env = os.environ.get("EDGEPRUNE_ARM64_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "edgeprune" / "arm64"


@dataclass(frozen=True)
class _Runtime:
    root: Path
    qemu: Path
    python: Path
    sysroot: Path
    site_packages: Path
    versions: dict[str, str]


def _runtime(cache: str | os.PathLike | None) -> _Runtime:
    root = Path(cache) if cache is not None else runtime_dir()
    manifest_path = root / "manifest.json"
    hint = f"{_BUILD_HINT} --cache {root}" if cache is not None else _BUILD_HINT
    if not manifest_path.is_file():
        raise MissingDependencyError(
            f"aarch64 runtime not built: {str(manifest_path)!r} does not exist; {hint}")
    try:
        m = json.loads(manifest_path.read_text())
        rt = _Runtime(
            root=root,
            qemu=root / m["qemu"]["path"],
            python=root / m["python"]["executable"],
            sysroot=root / m["python"]["sysroot"],
            site_packages=root / m["site_packages"],
            versions={"qemu": str(m["qemu"]["version"]), "python": str(m["python"]["version"]),
                      **{k: str(v) for k, v in m["packages"].items()}},
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MissingDependencyError(
            f"aarch64 runtime manifest {str(manifest_path)!r} is unreadable ({e!r}); "
            f"delete it and {hint}") from e
    for what, p in (("qemu-aarch64", rt.qemu), ("aarch64 python", rt.python),
                    ("sysroot", rt.sysroot), ("site-packages", rt.site_packages)):
        if not p.exists():
            raise MissingDependencyError(
                f"aarch64 runtime in {str(root)!r} is incomplete: {what} {str(p)!r} is missing; "
                f"delete {str(manifest_path)!r} and {hint}")
    if not os.access(rt.qemu, os.X_OK):
        raise MissingDependencyError(f"{str(rt.qemu)!r} is not executable; {hint}")
    return rt


def available(cache: str | os.PathLike | None = None) -> bool:
    """True when the runtime in ``cache`` (default :func:`runtime_dir`) is complete: its
    manifest exists and the qemu and python binaries it names are there."""
    try:
        _runtime(cache)
    except MissingDependencyError:
        return False
    return True


def versions(cache: str | os.PathLike | None = None) -> dict[str, str]:
    """Versions inside the aarch64 runtime, from its manifest: ``qemu``, ``python``, ``numpy``,
    ``ai-edge-litert``, ``onnxruntime``. Raises :class:`MissingDependencyError` if not built."""
    return dict(_runtime(cache).versions)


def run_artifact(path: str | os.PathLike, inputs: np.ndarray, *, cpu: str = DEFAULT_CPU,
                 cache: str | os.PathLike | None = None, timeout_s: float = 600) -> np.ndarray:
    """Run ``path`` (.tflite or .onnx) on the aarch64 runtime under ``qemu-aarch64 -cpu cpu``.

    ``inputs`` is a batch exactly as the artifact expects it (NHWC for TFLite, NCHW for ONNX;
    float32 or int8 as the input tensor is). An artifact with batch size 1 is run once per
    sample; one with a matching or dynamic batch, once. Returns the raw outputs stacked,
    shape ``(N, ...)``, in the artifact's output dtype (no dequantisation).
    """
    return run_artifacts([(path, inputs)], cpu=cpu, cache=cache, timeout_s=timeout_s)[0]


def run_artifacts(jobs: Sequence[tuple[str | os.PathLike, np.ndarray]], *, cpu: str = DEFAULT_CPU,
                  cache: str | os.PathLike | None = None,
                  timeout_s: float = 600) -> list[np.ndarray]:
    """:func:`run_artifact` for several ``(path, inputs)`` pairs in one emulated process (its
    startup costs several seconds). ``timeout_s`` bounds the whole process."""
    if cpu not in CPUS:
        why = ("QEMU's 'max' CPU model computes int8 TFLite results wrongly (tens of LSB off)"
               if cpu == "max" else "that CPU model is not checked to compute correctly")
        raise ConfigError(f"cpu={cpu!r} is refused: {why}; use one of {', '.join(CPUS)}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ConfigError(f"timeout_s={timeout_s!r} is invalid; need a positive number of seconds")
    if not jobs:
        raise ConfigError("no artifacts to run; pass at least one (path, inputs) pair")
    checked = [_check_job(p, x) for p, x in jobs]
    rt = _runtime(cache)

    with tempfile.TemporaryDirectory(prefix="edgeprune-arm64-") as tmp:
        tmp = Path(tmp).resolve()
        for p in [tmp, *(path for path, _ in checked)]:
            # qemu -L reads SYSROOT/<path> instead of <path> when that exists
            if (rt.sysroot / p.relative_to(p.anchor)).exists():
                raise RuntimeAdapterError(
                    f"{str(p)!r} is shadowed by {str(rt.sysroot / p.relative_to(p.anchor))!r} "
                    "under qemu -L; move the artifact or set TMPDIR elsewhere")
        spec = []
        for i, (path, x) in enumerate(checked):
            np.save(tmp / f"in{i}.npy", x, allow_pickle=False)
            spec.append({"model": str(path), "inputs": str(tmp / f"in{i}.npy"),
                         "outputs": str(tmp / f"out{i}.npy")})
        (tmp / "jobs.json").write_text(json.dumps(spec))
        shutil.copyfile(RUNNER, tmp / "runner.py")  # beside the data: nothing else is shadowed
        cmd = [str(rt.qemu), "-cpu", cpu, "-L", str(rt.sysroot), str(rt.python), "-I", "-S",
               str(tmp / "runner.py"), str(rt.site_packages), str(tmp / "jobs.json"),
               str(tmp / "info.json")]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
        what = ", ".join(repr(str(p)) for p, _ in checked)
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s,
                                  check=False)
        except subprocess.TimeoutExpired as e:
            raise RuntimeAdapterError(
                f"aarch64 run of {what} exceeded timeout_s={timeout_s} (emulated startup alone "
                "takes ~8 s); raise timeout_s") from e
        if proc.returncode != 0:
            tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-_STDERR_LINES:]
            raise RuntimeAdapterError(
                f"aarch64 run of {what} under qemu -cpu {cpu} failed (exit {proc.returncode}): "
                + (" | ".join(tail) or "no stderr"))
        info = json.loads((tmp / "info.json").read_text())
        if info.get("machine") != "aarch64":  # the runner checks this too; never trust one side
            raise RuntimeAdapterError(
                f"the emulated runner reported machine {info.get('machine')!r}, not 'aarch64'; "
                f"the runtime in {str(rt.root)!r} is broken: rebuild it ({_BUILD_HINT})")
        outs = []
        for (path, x), job in zip(checked, spec, strict=True):
            y = np.load(job["outputs"], allow_pickle=False)
            if y.shape[:1] != x.shape[:1]:
                raise RuntimeAdapterError(
                    f"aarch64 run of {str(path)!r} returned shape {y.shape} for {len(x)} inputs")
            outs.append(y)
    return outs


def _check_job(path: str | os.PathLike, inputs: np.ndarray) -> tuple[Path, np.ndarray]:
    p = Path(path).resolve()
    if p.suffix not in SUFFIXES:
        raise ConfigError(f"cannot run {str(p)!r} on aarch64: suffix {p.suffix!r} is not one of "
                          f"{', '.join(SUFFIXES)}")
    if not p.is_file():
        raise ConfigError(f"artifact {str(p)!r} does not exist")
    if not isinstance(inputs, np.ndarray):
        raise ConfigError(f"inputs for {str(p)!r} is a {type(inputs).__name__}; "
                          "pass a numpy array shaped (N, ...) as the artifact expects")
    if inputs.ndim < 1 or len(inputs) == 0 or inputs.dtype.hasobject:
        raise ConfigError(f"inputs for {str(p)!r} have shape {inputs.shape}, dtype {inputs.dtype}; "
                          "need a non-empty numeric batch (N, ...)")
    return p, np.ascontiguousarray(inputs)


def run_like_host(path: str | os.PathLike, x: np.ndarray, *, cpu: str = DEFAULT_CPU,
                  cache: str | os.PathLike | None = None, timeout_s: float = 600
                  ) -> tuple[np.ndarray, str, str]:
    """Run ``path`` on the aarch64 runtime the way a host :class:`Session` runs it: float32
    NCHW input in, float32 output out (int8 I/O quantised and dequantised with the artifact's
    own parameters, TFLite's NHWC changed at the boundary). Returns (outputs, runtime, its
    version in the aarch64 runtime)."""
    from edgeprune.runtimes import open_session

    sess = open_session(path, threads=1)  # the host session reads the layout and quantisation
    raw = run_artifact(path, _artifact_input(sess, x), cpu=cpu, cache=cache, timeout_s=timeout_s)
    pkg = "ai-edge-litert" if sess.runtime == "litert" else sess.runtime
    return _artifact_output(sess, raw), sess.runtime, str(versions(cache).get(pkg, "?"))


def _artifact_input(sess, x: np.ndarray) -> np.ndarray:
    if sess.runtime != "litert":
        return np.ascontiguousarray(x, dtype=np.float32)
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=np.float32)
    if sess.input_dtype != np.float32:
        scale, zp = sess.input_quantization
        info = np.iinfo(sess.input_dtype)
        nhwc = np.clip(np.round(nhwc / scale) + zp, info.min, info.max).astype(sess.input_dtype)
    return nhwc


def _artifact_output(sess, y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if sess.runtime == "litert" and sess.output_dtype != np.float32:
        scale, zp = sess.output_quantization
        y = (y.astype(np.float32) - zp) * scale
    y = y.reshape(len(y), -1) if y.ndim == 3 and y.shape[1] == 1 else y
    if y.ndim == 4 and sess.runtime == "litert":
        y = y.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(y, dtype=np.float32)
