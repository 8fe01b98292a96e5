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
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeprune.errors import ConfigError, MissingDependencyError, RuntimeAdapterError

__all__ = ["CPUS", "DEFAULT_CPU", "available", "run_artifact", "run_artifacts", "runtime_dir",
           "versions"]

#: QEMU CPU models checked to compute correctly: neoverse-n1 (asimd + dotprod, the default)
#: and cortex-a72 (plain NEON, e.g. a Raspberry Pi 4).
CPUS = ("neoverse-n1", "cortex-a72")
DEFAULT_CPU = "neoverse-n1"
SUFFIXES = (".tflite", ".onnx")
_BUILD_HINT = "run scripts/make-arm64-runtime.sh"
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
        (tmp / "runner.py").write_text(RUNNER)
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


# The script the aarch64 Python runs, written next to the data for each call. It uses only the
# standard library, numpy and the runtime it runs.
RUNNER = r'''
"""edgeprune aarch64 runner: python runner.py SITE_PACKAGES JOBS_JSON INFO_JSON"""
import json
import platform
import sys

if platform.machine() != "aarch64":
    sys.exit(f"edgeprune arm64 runner: platform.machine() is {platform.machine()!r}, not "
             "'aarch64'; refusing to run anywhere but the emulated aarch64 runtime")
sys.path.insert(0, sys.argv[1])

import numpy as np  # noqa: E402

ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
               "tensor(double)": np.float64, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
               "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64}


def fail(msg):
    sys.exit(f"edgeprune arm64 runner: {msg}")


def plan(model, x, shape, dtype, dynamic_batch):
    """How many samples per invocation: the whole batch, or 1 at a time."""
    if x.dtype != dtype or tuple(x.shape[1:]) != tuple(shape[1:]):
        fail(f"{model}: inputs have shape {x.shape} dtype {x.dtype}; the artifact expects "
             f"(N, {', '.join(str(s) for s in shape[1:])}) {np.dtype(dtype)}")
    if dynamic_batch or shape[0] == len(x):
        return len(x)
    if shape[0] == 1:
        return 1
    fail(f"{model}: {len(x)} inputs do not fit the artifact's fixed batch {shape[0]}")


def run_tflite(model, x):
    from importlib.metadata import version

    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=model, num_threads=1)
    ins, outs = interp.get_input_details(), interp.get_output_details()
    if len(ins) != 1 or len(outs) != 1:
        fail(f"{model} has {len(ins)} inputs / {len(outs)} outputs; need 1 / 1")
    d = ins[0]
    sig = [int(s) for s in d.get("shape_signature", d["shape"])]
    step = plan(model, x, [int(s) for s in d["shape"]], np.dtype(d["dtype"]), sig[0] == -1)
    if sig[0] == -1:
        interp.resize_tensor_input(d["index"], [step, *x.shape[1:]])
    interp.allocate_tensors()
    ys = []
    for i in range(0, len(x), step):
        interp.set_tensor(d["index"], x[i:i + step])
        interp.invoke()
        ys.append(np.array(interp.get_tensor(outs[0]["index"])))
    return np.concatenate(ys), "ai-edge-litert", version("ai-edge-litert")


def run_onnx(model, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    ins, outs = sess.get_inputs(), sess.get_outputs()
    if len(ins) != 1 or len(outs) != 1:
        fail(f"{model} has {len(ins)} inputs / {len(outs)} outputs; need 1 / 1")
    if ins[0].type not in ONNX_DTYPES:
        fail(f"{model}: input type {ins[0].type} is not handled")
    shape = [d if isinstance(d, int) else -1 for d in ins[0].shape]
    step = plan(model, x, shape, np.dtype(ONNX_DTYPES[ins[0].type]), shape[0] == -1)
    ys = [sess.run([outs[0].name], {ins[0].name: x[i:i + step]})[0] for i in range(0, len(x), step)]
    return np.concatenate(ys), "onnxruntime", ort.__version__


def main():
    jobs = json.load(open(sys.argv[2]))
    info = {"machine": platform.machine(), "python": platform.python_version(),
            "numpy": np.__version__, "runs": []}
    for job in jobs:
        x = np.load(job["inputs"], allow_pickle=False)
        run = run_tflite if job["model"].endswith(".tflite") else run_onnx
        y, runtime, version = run(job["model"], x)
        np.save(job["outputs"], y, allow_pickle=False)
        info["runs"].append({"model": job["model"], "runtime": runtime, "version": version,
                             "output_dtype": str(y.dtype), "output_shape": list(y.shape)})
    with open(sys.argv[3], "w") as f:
        json.dump(info, f)


main()
'''
