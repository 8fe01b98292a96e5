"""The emulated aarch64 device: the real aarch64 builds of LiteRT and ONNX Runtime under QEMU.

``scripts/make-arm64-runtime.sh`` builds the runtime into a cache directory: QEMU 10 user mode,
a Debian arm64 Python 3.11 sysroot and aarch64 wheels of numpy, ai-edge-litert and onnxruntime
pinned to the host's versions. The ``arm64-emulated`` targets (``connection =
"qemu://CPU"``) start the device agent (:mod:`edgeprune.agent`) in that Python over stdio
(:mod:`edgeprune.runtimes.device`), so artifacts run there exactly as on a real device.

This checks that the ARM kernels (NEON, dotprod) compute the same numbers; it says nothing
about speed. Timings under emulation mean nothing for a device: those targets refuse to
measure. The agent refuses to pretend: its ``info`` reports the machine it runs on
(``aarch64``), and edgeprune checks it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import ConfigError, MissingDependencyError

__all__ = ["CPUS", "DEFAULT_CPU", "agent_command", "available", "runtime_dir", "versions"]

#: QEMU CPU models checked to compute correctly: neoverse-n1 (asimd + dotprod, the default)
#: and cortex-a72 (plain NEON, e.g. a Raspberry Pi 4).
CPUS = ("neoverse-n1", "cortex-a72")
DEFAULT_CPU = "neoverse-n1"
SUFFIXES = (".tflite", ".onnx")
_BUILD_HINT = "run scripts/make-arm64-runtime.sh"


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


def agent_command(cpu: str = DEFAULT_CPU, cache: str | os.PathLike | None = None) -> tuple[list[str], str]:
    """The command that starts the emulated aarch64 Python (``qemu-aarch64 -cpu cpu``) ready
    to run the device agent over stdio, and the site-packages directory its bootstrap must
    put on ``sys.path`` (``-I -S``: nothing of the host's Python leaks in)."""
    if cpu not in CPUS:
        why = ("QEMU's 'max' CPU model computes int8 TFLite results wrongly (tens of LSB off)"
               if cpu == "max" else "that CPU model is not checked to compute correctly")
        raise ConfigError(f"cpu={cpu!r} is refused: {why}; use one of {', '.join(CPUS)}")
    rt = _runtime(cache)
    return ([str(rt.qemu), "-cpu", cpu, "-L", str(rt.sysroot), str(rt.python), "-I", "-S", "-u"],
            str(rt.site_packages))
