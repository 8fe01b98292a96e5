"""The ``edgeprune`` command line. Errors edgeprune raises on purpose print one line and exit 2."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from edgeprune.cli._quiet import quiet_output
from edgeprune.errors import EdgepruneError
from edgeprune.types import Progress


def _progress_bar(desc: str) -> tuple[Callable[[Progress], None], Callable[[], None]]:
    from tqdm import tqdm

    bar = None

    def tick(p: Progress) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=p.total, desc=desc, unit="step", leave=False, file=sys.stderr,
                       disable=None)
        bar.n = p.step
        bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in p.metrics.items()},
                        refresh=False)
        bar.refresh()

    def close() -> None:
        if bar is not None:
            bar.close()

    return tick, close


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} is invalid; need a positive integer")
    return v


def _set_threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


def _device_name(device: str) -> str:
    import platform

    import torch

    if torch.device(device).type == "cuda":
        return f"{device}: {torch.cuda.get_device_name(torch.device(device))}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def cmd_train(a: argparse.Namespace) -> int:
    import torch

    import edgeprune
    from edgeprune import data
    from edgeprune import models as zoo
    from edgeprune._io import write_json
    from edgeprune.models.checkpoint import ModelSpec
    from edgeprune.train import TrainConfig, evaluate, train
    from edgeprune.types import InputSpec

    _set_threads(a.threads)
    out = _out_dir(a.out)
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed)
    zoo.create(a.model)  # an unknown name fails here, before any data is read
    src = data.open(a.data, default_split="train", labels=True, limit=a.limit)
    val = None
    val_spec = a.val_data
    if val_spec is None and src.split == "train" and src.name in ("shapes", "digits", "cifar10"):
        base = a.data.rsplit(":", 1)[0] if a.data.endswith((":train", ":test")) else a.data
        val_spec = f"{base}:test"
    if val_spec:
        val = data.open(val_spec, labels=True, limit=a.val_limit)
    model = zoo.create(a.model, num_classes=max(src.num_classes, 2))
    mean, std = data.channel_stats(src)
    ispec = InputSpec(shape=(3, 32, 32), mean=mean, std=std, class_names=src.class_names)
    tick, close = _progress_bar(f"train {a.model}")
    try:
        res = train(model, src, input_spec=ispec, config=cfg, val=val, on_progress=tick,
                    device=a.device)
    finally:
        close()
    final = evaluate(res.model, val, input_spec=ispec) if val is not None else None
    metrics = {
        "model": a.model,
        "data": a.data,
        "train_images": len(src),
        "val_data": val_spec,
        "val_images": len(val) if val is not None else 0,
        "val_top1": final.top1 if final else None,
        "history": list(res.history),
        "train_wall_s": round(res.wall_s, 1),
        "train_device": _device_name(a.device),
        "torch_version": torch.__version__,
        "config": cfg.to_dict(),
        "command": "edgeprune " + " ".join(shlex.quote(x) for x in a.argv),
        "edgeprune_version": edgeprune.__version__,
    }
    spec = ModelSpec(a.model, {"num_classes": max(src.num_classes, 2), "in_channels": 3}, ispec,
                     {"val_top1": metrics["val_top1"], "data": a.data})
    edgeprune.save(res.model, out / "model.safetensors", spec=spec)
    write_json(out / "metrics.json", metrics)
    print(res)
    if final is not None:
        print(f"final {val_spec}: {final}")
    print(f"wrote {out / 'model.safetensors'} and {out / 'metrics.json'}")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    import edgeprune
    from edgeprune import data
    from edgeprune.train import evaluate

    _set_threads(a.threads)
    model = edgeprune.load(a.checkpoint)
    spec = model.edgeprune_spec
    ref = edgeprune.load(a.reference) if a.reference else None
    src = data.open(a.data, labels=not a.no_labels, size=spec.input.hw, limit=a.limit)
    res = evaluate(model, src, input_spec=spec.input, reference=ref,
                   reference_input_spec=ref.edgeprune_spec.input if ref is not None else None)
    if a.json:
        print(json.dumps({"checkpoint": a.checkpoint, "data": a.data, **res.to_dict()}))
    else:
        print(f"{a.checkpoint} on {a.data}: {res}")
    return 0


def _budget_ratio(text: str) -> float:
    t = text.strip().lower()
    try:
        v = float(t[:-1] if t.endswith("x") else t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a ratio; write e.g. 0.5x") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid; need a ratio in (0, 1], e.g. 0.5x")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{v} is invalid; need a finite number > 0")
    return v


def _writable_parent(p: Path, flag: str) -> None:
    """Raise unless the nearest existing ancestor of ``p`` is a writable directory."""
    from edgeprune.errors import ConfigError

    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag} {str(p)!r} cannot be created: {str(parent)!r} is a file; "
                                  "choose another path")
            if not os.access(parent, os.W_OK):
                raise ConfigError(f"{flag} {str(p)!r} cannot be created: {str(parent)!r} is not "
                                  "writable; choose another path")
            return


def _out_dir(text: str, flag: str = "--out") -> Path:
    """An output directory, checked before any work: not a file, creatable, writable."""
    from edgeprune.errors import ConfigError

    p = Path(text)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {text!r} is an existing file; give a directory (created if missing)")
    if p.is_dir() and not os.access(p, os.W_OK):
        raise ConfigError(f"{flag} {text!r} is not writable; choose another directory")
    _writable_parent(p, flag)
    return p


def _out_file(text: str, flag: str = "--out") -> Path:
    """An output file, checked before any work: not a directory, its directory creatable."""
    from edgeprune.errors import ConfigError

    p = Path(text)
    if p.is_dir():
        raise ConfigError(f"{flag} {text!r} is a directory; give a file path, e.g. "
                          f"{str(p / 'profile.json')!r}")
    _writable_parent(p, flag)
    return p


def cmd_prune(a: argparse.Namespace) -> int:
    import hashlib

    import edgeprune
    from edgeprune import data
    from edgeprune.errors import ConfigError
    from edgeprune.pruning import PruneConfig
    from edgeprune.targets import load_target

    _set_threads(a.threads)
    cfg = PruneConfig()
    if a.config:
        try:
            cfg = PruneConfig.from_dict(json.loads(Path(a.config).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read prune config {a.config!r}: {e}") from e
    overrides = {k: getattr(a, k) for k in ("epochs", "steps", "students", "seed", "device",
                                            "round_to", "min_width", "verify", "remove_blocks",
                                            "distill_epochs")
                 if getattr(a, k) is not None}
    cfg = cfg.replace(**overrides)
    out = _out_dir(a.out)  # a bad --out or target fails before any data is read
    load_target(a.target)
    model = edgeprune.load(a.checkpoint)
    spec = model.edgeprune_spec
    # a spec without a split suffix reads the train split (a folder's train/), never test images
    src = data.open(a.data, default_split="train", labels=False,
                    size=spec.input.hw, limit=a.limit)
    print(f"pruning data: {a.data} (split {src.split}, {len(src)} images, labels not read)")
    batches = data.Batches(src, a.batch_size, mean=spec.input.mean, std=spec.input.std,
                           augment=True, fixed_batches=cfg.heldout_batches, seed=cfg.seed)
    tick, close = _progress_bar("prune")
    try:
        res = edgeprune.prune(model, batches, target=a.target, profile=a.profile,
                              budget_ms=a.budget_ms, budget_ratio=a.budget, config=cfg,
                              on_progress=tick)
    finally:
        close()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun every rank holds the same result; rank 0 writes it
    sha = hashlib.sha256(Path(a.checkpoint).read_bytes()).hexdigest()
    meta = {"pruned_from": str(a.checkpoint), "pruned_from_sha256": sha, "target": res.target,
            "predicted": res.predicted_cost, "cost_unit": res.cost_unit,
            "val_top1": None, "teacher_val_top1": spec.metadata.get("val_top1")}  # not re-evaluated
    command = "edgeprune " + " ".join(shlex.quote(x) for x in a.argv)
    report = {"checkpoint": str(a.checkpoint), "checkpoint_sha256": sha, "data": a.data,
              "data_split": src.split, "images": len(src), "batch_size": a.batch_size, "command": command,
              "edgeprune_version": edgeprune.__version__}
    res.save(out, spec=spec, metadata=meta, report=report, title=str(a.checkpoint), command=command)
    print(res)
    print(f"wrote {out / 'model.safetensors'}, {out / 'prune_report.json'}, {out / 'prune_report.md'}")
    if not res.within_budget:
        print(f"warning: {res.notes[-1] if res.notes else 'over budget'}", file=sys.stderr)
    _prune_plots(out)
    return 0


def _report_images(report: Path) -> list[str]:
    """The PNG files a report.md embeds, in order."""
    return re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report.read_text())


def _prune_plots(out: Path) -> None:
    """report.md with plots beside what `prune` wrote; without matplotlib, say how to get it."""
    from edgeprune.errors import MissingDependencyError
    from edgeprune.reporting import write_report

    try:
        path = write_report(out)
    except MissingDependencyError:
        print(f"report with plots skipped: matplotlib is not installed; pip install "
              f"'edgeprune[report]', then edgeprune report {shlex.quote(str(out))}")
        return
    print(f"wrote {path} ({', '.join(_report_images(path))})")


def cmd_report(a: argparse.Namespace) -> int:
    from edgeprune.reporting import write_report

    out = _out_dir(a.out) if a.out else None
    path = write_report(a.run, out)
    print(f"wrote {path}")
    for name in _report_images(path):
        print(f"  {name}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    import edgeprune
    from edgeprune import data
    from edgeprune.bundle import ExportConfig
    from edgeprune.errors import ConfigError

    _set_threads(a.threads)
    out = _out_dir(a.out)
    formats = tuple(f.strip() for f in a.formats.split(",") if f.strip())
    try:
        ptq = (ExportConfig().int8_ptq if a.int8_ptq is None else () if a.int8_ptq.strip() == "none"
               else tuple(s.strip() for s in a.int8_ptq.split(",") if s.strip()))
        cfg = ExportConfig(formats=formats, calibration_images=a.calib_images,
                           coreml_precision=a.coreml_precision, int8_logits=a.int8_logits, int8_ptq=ptq)
    except ConfigError as e:
        given = f" --int8-ptq {a.int8_ptq!r}" if a.int8_ptq is not None else ""
        raise ConfigError(f"--formats {a.formats!r}{given}: {e}") from None
    model = edgeprune.load(a.checkpoint)
    spec = model.edgeprune_spec.input
    calib = None
    if a.calib_data:
        src = data.open(a.calib_data, size=spec.hw, limit=a.calib_images)
        calib = data.Batches(src, 64, mean=spec.mean, std=spec.std, shuffle=False)
    elif "tflite-int8" in formats:
        raise ConfigError("--formats includes tflite-int8, which needs --calib-data SPEC (unlabeled images "
                          "like the ones the model will see, e.g. the pruning data)")
    tick, close = _progress_bar("export")
    try:
        bundle = edgeprune.export(model, out, data=calib, config=cfg, force=a.force, on_progress=tick)
    finally:
        close()
    print(bundle)
    print(f"wrote {out}/ (model.json, README.md and the artifacts)")
    return 0


def cmd_validate(a: argparse.Namespace) -> int:
    import edgeprune
    from edgeprune import data
    from edgeprune._io import write_json
    from edgeprune.bundle import Bundle

    _set_threads(a.threads)
    bundle = Bundle.load(a.bundle)
    spec = edgeprune.read_spec(bundle.source_checkpoint).input
    src = data.open(a.data, labels=not a.no_labels, size=spec.hw, limit=a.limit)
    on = [p.strip() for p in a.on.split(",") if p.strip()]
    tick, close = _progress_bar("validate")
    try:
        report = edgeprune.validate(bundle, data.batches(src, 256, mean=spec.mean, std=spec.std),
                                    on=on, on_progress=tick)
    finally:
        close()
    write_json(bundle.path / "validation.json", report.to_dict())
    print(report)
    print(f"wrote {bundle.path / 'validation.json'}")
    return 0 if report.ok else 1


def cmd_check(a: argparse.Namespace) -> int:
    import edgeprune
    from edgeprune._io import atomic_path
    from edgeprune.budgets import Budget, load_budgets
    from edgeprune.errors import ConfigError
    from edgeprune.targets import load_target

    outs = [(flag, _out_file(v, flag)) for flag, v in (("--junit", a.junit), ("--markdown", a.markdown),
                                                       ("--json", a.json_out)) if v]
    single = (a.target, a.budget_ms, a.mode, a.profile)
    if a.subject.endswith(".toml"):
        if any(v is not None for v in single):
            raise ConfigError(f"{a.subject!r} is a budgets file; --target/--budget-ms/--mode/--profile "
                              "are for one artifact given on the command line")
        budgets = load_budgets(a.subject)
    else:
        if a.target is None or a.budget_ms is None:
            raise ConfigError(f"checking {a.subject!r} needs --target T and --budget-ms X (or give an "
                              "edgeprune-budgets.toml)")
        budgets = [Budget(Path(a.subject), load_target(a.target), a.budget_ms, a.mode or "measure",
                          Path(a.profile) if a.profile else None)]
    tick, close = _progress_bar("check")
    try:
        report = edgeprune.check(budgets, on_progress=tick)
    finally:
        close()
    writers = {"--junit": report.to_junit, "--markdown": report.to_markdown,
               "--json": lambda: json.dumps(report.to_dict(), indent=2) + "\n"}
    for flag, path in outs:
        with atomic_path(path) as tmp:
            tmp.write_text(writers[flag]())
    print(report)
    return report.exit_code


class _Parser(argparse.ArgumentParser):
    """Usage errors print one line (what was wrong, and where to look), then exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _load_model(text: str):
    """A checkpoint path (.safetensors) or a zoo name (fresh weights with default
    BatchNorm: latency depends on structure, as long as no branch is exactly zero)."""
    import edgeprune
    from edgeprune import models as zoo
    from edgeprune.errors import ConfigError
    from edgeprune.models.checkpoint import spec_of

    if text.endswith(".safetensors"):
        return edgeprune.load(text)
    if text in zoo.names():
        from edgeprune.profiling.latency import dense_copy

        # fresh weights, default BatchNorm: zero-gamma branches would be folded away
        m = dense_copy(zoo.create(text)).eval()
        m.edgeprune_spec = spec_of(m)
        return m
    raise ConfigError(f"model {text!r} is neither a .safetensors checkpoint nor a zoo model "
                      f"({', '.join(zoo.names())})")


def cmd_profile(a: argparse.Namespace) -> int:
    import edgeprune
    from edgeprune.profiling import LatencyProfile
    from edgeprune.targets import load_target

    _set_threads(a.torch_threads)
    out = _out_file(a.out)
    target = load_target(a.target)
    model = _load_model(a.model)
    cache = LatencyProfile.load(a.cache, target=target) if a.cache else None
    tick, close = _progress_bar(f"profile {target.name}")
    try:
        prof = edgeprune.profile(model, target=target, max_points=a.max_points, cache=cache,
                                 layer_cache=not a.no_layer_cache, on_progress=tick)
    finally:
        close()
    prof.save(out)
    print(prof)
    print(f"wrote {out}")
    return 0


def cmd_measure(a: argparse.Namespace) -> int:
    import edgeprune

    subject = a.subject
    if not subject.endswith((".tflite", ".onnx")):
        subject = _load_model(subject)
    stats = edgeprune.measure(subject, target=a.target)
    if a.json:
        print(json.dumps(stats.to_dict()))
    else:
        print(f"{a.subject} on {a.target}: {stats}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edgeprune", description=__doc__)
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--verbose", action="store_true",
                   help="show third-party warnings and converter logs (hidden by default)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a zoo model with labels (the baseline/teacher)")
    t.add_argument("--model", required=True, help="zoo architecture, e.g. resnet20")
    t.add_argument("--data", required=True, help="data spec, e.g. shapes or shapes:train")
    t.add_argument("--epochs", type=_positive_int, default=15)
    t.add_argument("--batch-size", type=_positive_int, default=128)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--limit", type=_positive_int, default=None, help="use the first N training images")
    t.add_argument("--val-data", default=None, help="validation spec (default: the :test split)")
    t.add_argument("--val-limit", type=_positive_int, default=None)
    t.add_argument("--device", default="cpu", help="where training steps run: cpu (default) or cuda")
    t.add_argument("--out", required=True, help="output directory")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint: top-1, and agreement with another")
    e.add_argument("checkpoint")
    e.add_argument("--data", required=True, help="data spec, e.g. shapes:test")
    e.add_argument("--reference", default=None, help="second checkpoint to compare predictions with")
    e.add_argument("--no-labels", action="store_true", help="data has no labels: agreement only")
    e.add_argument("--limit", type=_positive_int, default=None)
    e.add_argument("--json", action="store_true", help="print one JSON line")
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("profile", help="measure a latency profile of a model on a target")
    pr.add_argument("--target", required=True, help="target name (targets/*.toml) or .toml path")
    pr.add_argument("--model", required=True, help="checkpoint (.safetensors) or zoo name")
    pr.add_argument("--out", required=True, help="profile JSON to write")
    pr.add_argument("--max-points", type=_positive_int, default=8,
                    help="grid points per width axis (default 8)")
    pr.add_argument("--cache", default=None, help="earlier profile whose points are reused")
    pr.add_argument("--no-layer-cache", action="store_true",
                    help="convert every single-layer model anew and keep none (default: reuse them "
                         "from $EDGEPRUNE_LAYER_CACHE or ~/.cache/edgeprune/layer-models)")
    pr.add_argument("--torch-threads", type=_positive_int, default=None)
    pr.set_defaults(func=cmd_profile)

    pn = sub.add_parser("prune", help="prune a checkpoint to a latency budget on a target (no labels)")
    pn.add_argument("checkpoint", help="trained model (.safetensors)")
    pn.add_argument("--data", required=True, help="unlabeled data spec, e.g. shapes or a folder")
    pn.add_argument("--target", required=True, help="target name (targets/*.toml) or .toml path")
    pn.add_argument("--profile", default=None,
                    help="latency profile JSON of this architecture on the target (default: measure now)")
    b = pn.add_mutually_exclusive_group(required=True)
    b.add_argument("--budget-ms", type=_positive_float, default=None,
                   help="budget in predicted ms (MMACs for the macs target)")
    b.add_argument("--budget", type=_budget_ratio, default=None,
                   help="budget as a fraction of the baseline, e.g. 0.5x")
    pn.add_argument("--epochs", type=_positive_int, default=None)
    pn.add_argument("--steps", type=_positive_int, default=None, help="optimiser steps (overrides --epochs)")
    pn.add_argument("--students", type=_positive_int, default=None)
    pn.add_argument("--seed", type=int, default=None)
    pn.add_argument("--batch-size", type=_positive_int, default=64)
    pn.add_argument("--limit", type=_positive_int, default=None, help="use the first N images")
    pn.add_argument("--round-to", type=_positive_int, default=None,
                    help="channel step of pruned widths (default: the target's round_to)")
    pn.add_argument("--min-width", type=_positive_int, default=None,
                    help="narrowest a channel group may become (default: round_to; the floor is "
                         "max(min_width, round_to))")
    pn.add_argument("--device", default=None, help="where pruning steps run: cpu (default) or cuda")
    pn.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                    help="time the pruned model on the target and keep pruning while it measures over "
                         "the budget in every timing run (default: on for a local target, off for "
                         "macs and devices; {\"verify_strict\": true} in --config acts on any excess)")
    pn.add_argument("--remove-blocks", action=argparse.BooleanOptionalAction, default=None,
                    help="let the pruner remove whole residual blocks (default: only when the budget "
                         "is below what channel pruning alone reaches)")
    pn.add_argument("--distill-epochs", type=_positive_int, default=None,
                    help="after removal, distil the pruned model from the teacher's logits (no labels) "
                         "for N passes over the data; widths and latency unchanged (default: off)")
    pn.add_argument("--config", default=None, help="PruneConfig as JSON (flags above override it)")
    pn.add_argument("--out", required=True, help="output directory")
    pn.set_defaults(func=cmd_prune)

    ex = sub.add_parser("export", help="export a checkpoint to TFLite/int8/CoreML/ONNX with model.json")
    ex.add_argument("checkpoint", help="model (.safetensors), e.g. a pruned one")
    ex.add_argument("--formats", default="tflite,tflite-int8,coreml,onnx",
                    help="comma-separated: tflite, tflite-int8, coreml, onnx")
    ex.add_argument("--calib-data", default=None, help="unlabeled data for int8 calibration (and parity)")
    ex.add_argument("--calib-images", type=_positive_int, default=500)
    ex.add_argument("--coreml-precision", choices=("fp16", "fp32"), default="fp16")
    ex.add_argument("--int8-logits", choices=("top2", "full"), default="top2",
                    help="int8 output range: top2 (classifiers; low logits saturate) or full")
    ex.add_argument("--int8-ptq", default=None,
                    help="label-free steps before int8 quantisation, comma-separated: cle, adaround, "
                         "bias_correction; or none (default: ExportConfig's, docs/export.md)")
    ex.add_argument("--out", required=True, help="bundle directory (new or empty)")
    ex.add_argument("--force", action="store_true",
                    help="replace an existing bundle in --out (the whole bundle, atomically)")
    ex.set_defaults(func=cmd_export)

    va = sub.add_parser("validate", help="check a bundle's artifacts against PyTorch on their runtimes")
    va.add_argument("bundle", help="bundle directory written by 'edgeprune export'")
    va.add_argument("--data", required=True, help="data spec, e.g. shapes:test (labels give accuracy)")
    va.add_argument("--no-labels", action="store_true", help="data has no labels: parity only")
    va.add_argument("--on", default="host",
                    help="comma-separated: host and device targets, e.g. host,arm64-emulated "
                         "(aarch64 under QEMU; arm64-emulated-cortex-a72) or raspberry-pi-4-litert")
    va.add_argument("--limit", type=_positive_int, default=1000, help="images to check")
    va.set_defaults(func=cmd_validate)

    ck = sub.add_parser("check", help="latency budgets as a CI gate: exit 0 within, 1 over, 2 not measured")
    ck.add_argument("subject", help="edgeprune-budgets.toml, or one artifact (.tflite/.onnx, bundle "
                                    "directory or .safetensors) with --target and --budget-ms")
    ck.add_argument("--target", default=None, help="target of the one artifact")
    ck.add_argument("--budget-ms", type=_positive_float, default=None, help="its budget in ms")
    ck.add_argument("--mode", choices=("measure", "predict"), default=None,
                    help="measure on the target (default) or predict from --profile")
    ck.add_argument("--profile", default=None, help="the target's latency profile (predict mode)")
    ck.add_argument("--junit", default=None, help="write JUnit XML here (one testcase per budget)")
    ck.add_argument("--markdown", default=None, help="write a Markdown table here ($GITHUB_STEP_SUMMARY)")
    ck.add_argument("--json", dest="json_out", default=None, help="write the results as JSON here")
    ck.set_defaults(func=cmd_check)

    sub.add_parser("agent", help="the device agent (run on the device): edgeprune agent --help")

    me = sub.add_parser("measure", help="end-to-end latency of a model or artifact on a target")
    me.add_argument("subject", help="checkpoint, zoo name, .tflite or .onnx file")
    me.add_argument("--target", required=True)
    me.add_argument("--json", action="store_true")
    me.set_defaults(func=cmd_measure)

    rp = sub.add_parser("report",
                        help="Markdown report with PNG plots of a prune run or a benchmark")
    rp.add_argument("run", help="output directory of 'edgeprune prune' (prune_report.json), a "
                                "directory holding a benchmark's pruning.json, or that file")
    rp.add_argument("--out", default=None, help="directory for report.md and the plots "
                                                "(default: the run's directory)")
    rp.set_defaults(func=cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["agent"]:  # a server with its own options and output: no quieting, no torch
        from edgeprune import agent

        return agent.main(argv[1:])
    parser = build_parser()
    a = parser.parse_args(argv)
    a.argv = argv
    with quiet_output(a.verbose):
        try:
            return int(a.func(a) or 0)
        except EdgepruneError as e:
            print(f"edgeprune: error: {e}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    raise SystemExit(main())
