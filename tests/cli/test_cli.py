"""Every CLI error path exits non-zero with a one-line message; the happy paths work."""

import json
import subprocess
import sys

import numpy as np
import pytest

import edgeprune
from edgeprune import models
from edgeprune.cli import main
from edgeprune.targets import load_target


def run(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(list(argv)))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def assert_one_line_error(code, err, *needles):
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "error" in lines[0]
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def ckpt(tmp_path):
    return str(edgeprune.save(models.create("resnet20"), tmp_path / "m.safetensors"))


@pytest.mark.parametrize("argv, needles", [
    (["train", "--model", "resnet21", "--data", "shapes", "--out", "X"], ["resnet21", "resnet20"]),
    (["train", "--model", "resnet20", "--data", "/no/such/dir", "--out", "X"], ["/no/such/dir"]),
    (["train", "--model", "resnet20", "--data", "shapes", "--epochs", "0", "--out", "X"], ["--epochs", "0"]),
    (["train", "--model", "resnet20", "--data", "shapes"], ["--out"]),
    (["eval", "/no/such.safetensors", "--data", "shapes:test"], ["/no/such.safetensors", "does not exist"]),
    (["frobnicate"], ["frobnicate"]),
    (["--threads", "zero", "eval", "x", "--data", "shapes"], ["zero"]),
])
def test_error_paths(capsys, tmp_path, argv, needles):
    argv = [a.replace("X", str(tmp_path / "out")) for a in argv]
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_eval_corrupt_checkpoint(capsys, tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x00" * 64)
    code, _, err = run(capsys, "eval", str(p), "--data", "shapes:test")
    assert_one_line_error(code, err, "bad.safetensors")


def test_eval_labels_missing(capsys, tmp_path, ckpt):
    np.save(tmp_path / "x.npy", np.zeros((4, 32, 32, 3), np.uint8))
    code, _, err = run(capsys, "eval", ckpt, "--data", str(tmp_path / "x.npy"))
    assert_one_line_error(code, err, "has no labels")
    # with --no-labels and a reference it works and reports agreement only
    code, out, _ = run(capsys, "eval", ckpt, "--data", str(tmp_path / "x.npy"), "--no-labels",
                       "--reference", ckpt, "--json")
    assert code == 0
    res = json.loads(out)
    assert res["agreement"] == 1.0 and res["top1"] is None and res["images"] == 4


def test_train_then_eval(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, _ = run(capsys, "--threads", "1", "train", "--model", "resnet20", "--data", "digits",
                       "--epochs", "1", "--limit", "64", "--val-limit", "32", "--batch-size", "32",
                       "--out", str(out_dir))
    assert code == 0, out
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["val_images"] == 32 and metrics["val_data"] == "digits:test"
    assert metrics["command"].startswith("edgeprune ")
    model = edgeprune.load(out_dir / "model.safetensors")
    spec = model.edgeprune_spec
    assert spec.input.class_names == tuple(str(i) for i in range(10))
    assert spec.input.std[0] != 1.0  # normalisation measured on the training data
    code, out, _ = run(capsys, "eval", str(out_dir / "model.safetensors"), "--data", "digits:test",
                       "--limit", "32", "--json")
    assert code == 0
    assert json.loads(out)["top1"] == pytest.approx(metrics["val_top1"])


def test_console_script_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgeprune.cli", "eval", str(tmp_path / "x.safetensors"),
                        "--data", "shapes"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr


@pytest.mark.parametrize("argv, needles", [
    (["profile", "--target", "pi4", "--model", "resnet20", "--out", "X"], ["pi4", "host-litert"]),
    (["profile", "--target", "host-onnxruntime", "--model", "resnet99", "--out", "X"], ["resnet99"]),
    (["measure", "resnet20", "--target", "raspberry-pi-4-litert"], ["EDGEPRUNE_PI4_TOKEN"]),
    (["measure", "resnet20", "--target", "arm64-emulated"], ["emulation", "validate"]),
    (["measure", "resnet20", "--target", "macs"], ["analytical"]),
    (["measure", "/no/model.tflite", "--target", "host-litert"], ["does not exist"]),
    (["profile", "--target", "host-litert", "--model", "resnet20", "--out", "X",
      "--cache", "/no/cache.json"], ["/no/cache.json"]),
])
def test_profile_and_measure_error_paths(capsys, tmp_path, argv, needles):
    argv = [a.replace("X", str(tmp_path / "p.json")) for a in argv]
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "p.json").exists()


def test_measure_prints_stats(capsys):
    code, out, _ = run(capsys, "measure", "resnet20", "--target", "host-onnxruntime", "--json")
    assert code == 0
    stats = json.loads(out)
    assert stats["runs"] == load_target("host-onnxruntime").measure.runs and 0 < stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"]


@pytest.mark.parametrize("suffix", ["", ":train"])
def test_train_on_cifar10_directory_validates_on_its_test_batch(capsys, tmp_path, suffix):
    from tests.nets import write_cifar10

    root = write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=8)
    out_dir = tmp_path / "run"
    code, out, _ = run(capsys, "--threads", "1", "train", "--model", "resnet20",
                       "--data", f"{root}{suffix}", "--epochs", "1", "--batch-size", "8",
                       "--out", str(out_dir))
    assert code == 0, out
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["val_data"] == f"{root}:test" and metrics["val_images"] == 8
    assert metrics["train_images"] == 40
    assert edgeprune.load(out_dir / "model.safetensors").edgeprune_spec.input.class_names[0] == "c0"


def _bad_data(tmp_path, kind):
    if kind == "empty folder":
        (tmp_path / "imgs").mkdir()
        return str(tmp_path / "imgs"), "no .png/.jpg files"
    if kind == "unreadable image":
        (tmp_path / "imgs").mkdir()
        (tmp_path / "imgs" / "a.png").write_bytes(b"not a png")
        return str(tmp_path / "imgs"), "cannot be read"
    if kind == "wrong shape":
        np.save(tmp_path / "x.npy", np.zeros((4, 32, 32, 5), np.uint8))
        return str(tmp_path / "x.npy"), "no axis of 1 or 3 channels"
    if kind == "nan":
        x = np.random.default_rng(0).random((4, 32, 32, 3)).astype(np.float32)
        x[0, 0, 0, 0] = np.nan
        np.save(tmp_path / "x.npy", x)
        return str(tmp_path / "x.npy"), "1 NaN"
    np.save(tmp_path / "x.npy", np.zeros((4, 32, 32, 3), np.int64))
    return str(tmp_path / "x.npy"), "dtype int64"


@pytest.mark.parametrize("kind", ["empty folder", "unreadable image", "wrong shape", "wrong dtype",
                                  "nan"])
@pytest.mark.parametrize("command", ["train", "eval"])
def test_bad_data_exits_with_one_line(capsys, tmp_path, ckpt, kind, command):
    spec, needle = _bad_data(tmp_path, kind)
    if command == "train":
        argv = ["train", "--model", "resnet20", "--data", spec, "--out", str(tmp_path / "out")]
    else:
        argv = ["eval", ckpt, "--data", spec, "--no-labels"]
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "out").exists()


@pytest.fixture
def small_ckpt(tmp_path):
    from edgeprune.models.checkpoint import ModelSpec
    from edgeprune.types import InputSpec
    from tests.nets import small_cnn

    spec = ModelSpec("tests.nets:SmallCNN", {}, InputSpec(shape=(3, 16, 16)))
    return str(edgeprune.save(small_cnn(), tmp_path / "small.safetensors", spec=spec))


def test_prune_writes_a_loadable_checkpoint_and_reports(capsys, tmp_path, small_ckpt):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (160, 16, 16, 3), dtype=np.uint8))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"update_interval": 4}))
    out = tmp_path / "pruned"
    code, stdout, err = run(capsys, "prune", small_ckpt, "--data", str(tmp_path / "x.npy"), "--target", "macs",
                            "--budget", "0.5x", "--steps", "30", "--batch-size", "16", "--config", str(cfg),
                            "--distill-epochs", "1", "--out", str(out))
    assert code == 0, err
    report = json.loads((out / "prune_report.json").read_text())
    assert report["config"]["distill_epochs"] == 1 and report["distill"]["steps"] == 8  # 10 batches, 2 held out
    assert "distilled from the teacher after removal" in stdout
    assert report["predicted"] <= report["budget"] == pytest.approx(0.5 * report["baseline_predicted"])
    assert report["removal_max_abs_diff"] <= 1e-4 and report["config"]["update_interval"] == 4
    pruned = edgeprune.load(out / "model.safetensors")
    assert sum(p.numel() for p in pruned.parameters()) == report["params_after"]
    assert pruned.edgeprune_spec.metadata["pruned_from_sha256"] == report["checkpoint_sha256"]
    assert "| c3.0 |" in (out / "prune_report.md").read_text() and "MMACs" in stdout


def test_prune_reads_only_the_train_split_of_a_folder(capsys, tmp_path, small_ckpt):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 48), ("test", 7)):
        (tmp_path / "imgs" / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / split / f"{i}.png")
    (tmp_path / "cfg.json").write_text(json.dumps({"update_interval": 2}))
    out = tmp_path / "pruned"
    code, stdout, err = run(capsys, "prune", small_ckpt, "--data", str(tmp_path / "imgs"), "--target", "macs",
                            "--budget", "0.6x", "--steps", "12", "--batch-size", "8",
                            "--config", str(tmp_path / "cfg.json"), "--out", str(out))
    assert code == 0, err
    report = json.loads((out / "prune_report.json").read_text())
    assert (report["data_split"], report["images"]) == ("train", 48)  # the 7 test images are not read
    assert "split train, 48 images" in stdout


@pytest.mark.parametrize("extra, needles", [
    (["--budget", "2x"], ["--budget", "2x"]),
    (["--budget", "half"], ["--budget", "half"]),
    (["--budget-ms", "-1"], ["--budget-ms"]),
    ([], ["--budget"]),
    (["--budget", "0.5x", "--target", "pi4"], ["pi4", "host-litert"]),
    (["--budget", "0.5x", "--config", "/no/cfg.json"], ["/no/cfg.json"]),
    (["--budget-ms", "0.000001"], ["below the smallest reachable"]),
    (["--budget", "0.5x", "--batch-size", "64"], ["fixed_batches=2", "64 images"]),
])
def test_prune_error_paths(capsys, tmp_path, small_ckpt, extra, needles):
    np.save(tmp_path / "x.npy", np.zeros((64, 16, 16, 3), dtype=np.uint8))
    argv = ["prune", small_ckpt, "--data", str(tmp_path / "x.npy"), "--target", "macs", "--steps", "30",
            "--batch-size", "16", "--out", str(tmp_path / "o"), *extra]
    if "--target" in extra:
        argv[4:6] = []
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra, needles", [
    (["--formats", "tflite,tflite-int4"], ["tflite-int4", "tflite-int8"]),
    (["--formats", "tflite-int8"], ["--calib-data"]),
    (["--formats", "onnx", "--calib-data", "/no/such/dir"], ["/no/such/dir"]),
    (["--int8-ptq", "cle,adarond"], ["--int8-ptq 'cle,adarond'", "'adaround'"]),
])
def test_export_error_paths(capsys, tmp_path, ckpt, extra, needles):
    code, _, err = run(capsys, "export", ckpt, "--out", str(tmp_path / "b"), *extra)
    assert_one_line_error(code, err, *needles)
    assert "None" not in err  # a flag the user did not give is not echoed
    assert not (tmp_path / "b" / "model.json").exists()


def test_export_then_validate_exit_codes(capsys, tmp_path, ckpt):
    out = tmp_path / "b"
    code, stdout, err = run(capsys, "export", ckpt, "--formats", "onnx", "--out", str(out))
    assert code == 0, err
    assert json.loads((out / "model.json").read_text())["artifacts"][0]["format"] == "onnx"
    code, stdout, err = run(capsys, "validate", str(out), "--data", "shapes:test", "--limit", "32")
    assert code == 0, err
    assert "pass" in stdout and json.loads((out / "validation.json").read_text())["ok"] is True
    (out / "model.onnx").write_bytes(b"not an onnx file")  # a broken artifact: exit 1, row 'fail'
    code, stdout, _ = run(capsys, "validate", str(out), "--data", "shapes:test", "--limit", "32")
    assert code == 1 and "fail" in stdout
    code, _, err = run(capsys, "validate", str(tmp_path), "--data", "shapes:test")
    assert_one_line_error(code, err, "no model.json")
    code, _, err = run(capsys, "validate", str(out), "--data", "shapes:test", "--on", "gpu")
    assert_one_line_error(code, err, "gpu")


@pytest.mark.parametrize("zipped", [True, False])
def test_a_torch_pickle_is_named_and_never_loaded(capsys, tmp_path, zipped):
    import torch

    path = tmp_path / "model.pt"
    torch.save(models.create("resnet20").state_dict(), path, _use_new_zipfile_serialization=zipped)
    code, _, err = run(capsys, "eval", str(path), "--data", "shapes:test")
    assert_one_line_error(code, err, "model.pt", "torch pickle", "weights_only=True", "edgeprune.save")


def _a_file(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("not a directory")
    return f


@pytest.mark.parametrize("make_argv, needles", [
    (lambda t, c, f: ["prune", c, "--data", "shapes", "--target", "host-litert", "--budget", "0.5x",
                   "--out", str(f)], ["--out", "existing file"]),
    (lambda t, c, f: ["profile", "--target", "host-litert", "--model", "resnet20",
                   "--out", str(f / "p.json")], ["--out", "is a file"]),
    (lambda t, c, f: ["profile", "--target", "host-litert", "--model", "resnet20", "--out", str(t)],
     ["--out", "is a directory"]),
    (lambda t, c, f: ["export", c, "--out", str(f)], ["--out", "existing file"]),
    (lambda t, c, f: ["train", "--model", "resnet20", "--data", "shapes",
                   "--out", str(f / "r")], ["--out", "is a file"]),
])
def test_bad_output_paths_fail_before_any_work(capsys, monkeypatch, tmp_path, ckpt, make_argv, needles):
    """Checked up front: the whole run used to happen first, then a traceback lost it. Every
    step that does work (reading data, profiling, pruning, exporting, training) is replaced by
    one that fails the test if it is reached."""
    import edgeprune
    from edgeprune import data, train

    def reached(*args, **kwargs):
        raise AssertionError("work started before the output path was checked")

    for mod, name in ((edgeprune, "profile"), (edgeprune, "prune"), (edgeprune, "export"),
                      (data, "open"), (train, "train")):
        monkeypatch.setattr(mod, name, reached)
    code, _, err = run(capsys, *make_argv(tmp_path, ckpt, _a_file(tmp_path)))
    assert code == 2
    assert_one_line_error(code, err, *needles)
    assert (tmp_path / "a_file").read_text() == "not a directory"


def test_export_into_a_bundle_replaces_it_whole_and_only_with_force(capsys, tmp_path, ckpt):
    out = tmp_path / "b"
    code, _, err = run(capsys, "export", ckpt, "--formats", "onnx,tflite", "--out", str(out))
    assert code == 0, err
    first = json.loads((out / "model.json").read_text())
    code, _, err = run(capsys, "export", ckpt, "--formats", "onnx", "--out", str(out))
    assert_one_line_error(code, err, "not empty", "--force")
    assert json.loads((out / "model.json").read_text()) == first  # untouched
    code, _, err = run(capsys, "export", ckpt, "--formats", "onnx", "--out", str(out), "--force")
    assert code == 0, err
    # the old bundle's model.tflite went with it: no artifact of another export remains
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model.json", "model.onnx",
                                                     "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.")]  # no build left over
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, _, err = run(capsys, "export", ckpt, "--formats", "onnx", "--out", str(tmp_path / "mine"),
                       "--force")
    assert_one_line_error(code, err, "no edgeprune bundle")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_prune_exposes_min_width_and_round_to(capsys, tmp_path, small_ckpt):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (96, 16, 16, 3), dtype=np.uint8))
    (tmp_path / "cfg.json").write_text(json.dumps({"update_interval": 4}))
    argv = ["prune", small_ckpt, "--data", str(tmp_path / "x.npy"), "--target", "macs", "--steps", "20",
            "--batch-size", "16", "--out", str(tmp_path / "o"), "--budget", "0.15x",
            "--config", str(tmp_path / "cfg.json")]
    code, _, err = run(capsys, *argv, "--round-to", "4", "--min-width", "8")
    assert_one_line_error(code, err, "below the smallest reachable", "every group at 8 channels",
                          "--round-to N --min-width N")
    code, _, err = run(capsys, *argv, "--round-to", "1", "--min-width", "1")
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "prune_report.json").read_text())
    assert report["config"]["min_width"] == 1 and report["config"]["round_to"] == 1


@pytest.mark.parametrize("verbose", [False, True])
def test_third_party_noise_is_hidden_unless_verbose(verbose):
    """A conversion on LiteRT prints torch FutureWarnings, absl/TFLite C++ lines and an XNNPACK
    INFO line; the CLI shows them only with --verbose (which proves this test can fail)."""
    argv = [sys.executable, "-m", "edgeprune.cli", *(["--verbose"] if verbose else []),
            "measure", "resnet20", "--target", "host-litert"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    noise = [ln for ln in (r.stdout + r.stderr).splitlines()
             if any(k in ln for k in ("Warning", "WARNING", "INFO:", "I0000", "W1201", "Failed to load"))]
    assert bool(noise) == verbose, noise[:5]
    assert "resnet20 on host-litert: litert" in r.stdout


def test_prune_removes_residual_blocks_only_when_allowed(capsys, tmp_path, ckpt):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (96, 32, 32, 3), dtype=np.uint8))
    (tmp_path / "cfg.json").write_text(json.dumps({"update_interval": 4}))
    argv = ["prune", ckpt, "--data", str(tmp_path / "x.npy"), "--target", "macs", "--steps", "20",
            "--batch-size", "16", "--out", str(tmp_path / "o"), "--budget", "0.3x", "--round-to", "16",
            "--config", str(tmp_path / "cfg.json")]
    code, _, err = run(capsys, *argv, "--no-remove-blocks")
    assert_one_line_error(code, err, "below the smallest reachable", "--remove-blocks")
    assert not (tmp_path / "o" / "model.safetensors").exists()
    code, out, err = run(capsys, *argv, "--remove-blocks")
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "prune_report.json").read_text())
    assert report["config"]["remove_blocks"] is True and report["removed_blocks"]
    assert "residual blocks removed" in out and "--distill-epochs 8" in out
    pruned = edgeprune.load(tmp_path / "o" / "model.safetensors")
    names = dict(pruned.named_modules())
    assert all(type(names[b]).__name__ == "RemovedBlock" for b in report["removed_blocks"])
