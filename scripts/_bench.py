"""What the benchmarks share: the provenance every result file starts with, the committed
baselines, and the data a checkpoint is calibrated and scored on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import edgeprune
from edgeprune import data
from edgeprune.profiling.latency import host_identity
from edgeprune.types import Progress

ROOT = Path(__file__).resolve().parents[1]


def provenance(benchmark: str, script: str, argv: list[str] | None) -> dict:
    """The head of a result file: what ran (the command line), when, on which host, with which
    edgeprune (its version and this checkout's commit), and whether timing was pinned
    (``$EDGEPRUNE_TIMING_CPUS``). Refuses (see :func:`check_checkout`) to describe results of
    another checkout's code."""
    check_checkout()
    args = argv if argv is not None else sys.argv[1:]
    return {"benchmark": benchmark, "command": " ".join(["python", f"scripts/{script}", *args]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": host_identity(), "edgeprune": edgeprune.__version__, "commit": commit(),
            "timing_cpus": os.environ.get("EDGEPRUNE_TIMING_CPUS") or "not pinned"}


def check_checkout(package: Path | None = None) -> None:
    """Exit unless the ``edgeprune`` these scripts import is this checkout's: a benchmark run
    from a clone of the repository, in a virtual environment with another checkout installed
    in editable mode, imports that checkout's code and would record this one's commit (every
    latency benchmark before 2026-12-07 evening ran so; its tree matched the clone's commit)."""
    pkg = (package or Path(edgeprune.__file__)).resolve().parent
    if pkg != ROOT / "edgeprune":
        raise SystemExit(f"these scripts are in {ROOT}, but they import edgeprune from {pkg.parent}: "
                         f"the results would describe other code; run them with PYTHONPATH={ROOT}")


def commit() -> str:
    """This checkout's git commit, ``+dirty`` when tracked files differ from it; ``unknown``
    outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def rows_with_host(doc: dict) -> list[dict]:
    """The rows of an earlier result file, each naming the host that measured it. Rows written
    before rows did so take the file's ``host``, all that was recorded (the host of the file's
    last invocation, without CPU id or instruction sets)."""
    return [{**r, "host": r.get("host") or doc.get("host")} for r in doc.get("rows", [])]


def merge_rows(old: list[dict], new: list[dict], key: Callable[[dict], tuple]) -> list[dict]:
    """``old`` rows (see :func:`rows_with_host`) and this invocation's ``new`` ones, stamped with
    this host: a row this run re-measured (same ``key``, same CPU) is replaced, one another
    CPU measured is kept beside it (a result holds for the host that measured it; CPUs sold
    under one name count as different, see LatencyProfile.check_host)."""
    here = host_identity()

    def full(r: dict) -> tuple:
        return (*key(r), *host_key(r.get("host")))

    stamped = [{**r, "host": here} for r in new]
    fresh = {full(r) for r in stamped}
    return [r for r in old if full(r) not in fresh] + stamped


def host_key(host: dict | None) -> tuple:
    """What tells two hosts' results apart: CPU name, id and kernel instruction sets."""
    h = host or {}
    return h.get("cpu"), h.get("cpu_id"), tuple(h.get("isa") or ())


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


def progress_lines(label: str, every_s: float = 300.0, *, clock: Callable[[], float] = time.monotonic,
                   out: Callable[..., None] = print) -> Callable[[Progress], None]:
    """An ``on_progress`` callback for a long row (a VGG-Small row runs two hours): one line at
    a stage's first tick, at the end of each phase, and otherwise at most every ``every_s``
    seconds, with the minutes since the row started and the step's numbers, so a log shows the
    row moving and how far it has to go."""
    t0 = clock()
    last: dict = {"stage": None, "at": t0}

    def tick(p: Progress) -> None:
        now = clock()
        if p.stage == last["stage"] and p.step < p.total and now - last["at"] < every_s:
            return
        last.update(stage=p.stage, at=now)
        nums = ", ".join(f"{k} {v:.4g}" for k, v in p.metrics.items() if isinstance(v, (int, float)))
        out(f"{label}: {p.stage} step {p.step}/{p.total} at {(now - t0) / 60:.1f} min"
            + (f" ({nums})" if nums else ""), flush=True)

    return tick
