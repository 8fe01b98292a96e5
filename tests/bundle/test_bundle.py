"""The export bundle (artifacts, model.json, README) and its validation, on the committed
ResNet-20 baseline with real calibration and test images."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import edgeprune
from edgeprune import data
from edgeprune.bundle import Bundle, ExportConfig
from edgeprune.convert import tflite_op_names, to_tflite_int8
from edgeprune.errors import ConfigError, ExportError
from edgeprune.runtimes import open_session
from edgeprune.targets import load_target
from tests.nets import TinyNet, randomize_bn

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / "bench" / "baselines" / "resnet20-shapes" / "model.safetensors"


def _has_coreml() -> bool:
    try:
        import coremltools  # noqa: F401
    except ImportError:
        return False
    return True


FORMATS = ("tflite", "tflite-int8", "onnx") + (("coreml",) if _has_coreml() else ())


@pytest.fixture(scope="module")
def baseline():
    return edgeprune.load(BASELINE)


def _calib(spec, n=200, offset=0, scale=1.0):
    src = data.open("shapes", size=spec.hw, limit=n + offset)
    batches = list(data.Batches(src, 50, mean=spec.mean, std=spec.std, shuffle=False))
    x = torch.cat(batches)[offset:offset + n] * scale
    return [x[i:i + 50] for i in range(0, len(x), 50)]


@pytest.fixture(scope="module")
def bundle(baseline, tmp_path_factory):
    spec = baseline.edgeprune_spec.input
    return edgeprune.export(baseline, tmp_path_factory.mktemp("bundle"), data=_calib(spec),
                            config=ExportConfig(formats=FORMATS))


def test_bundle_contents_and_model_json(bundle):
    d = bundle.path
    names = {"model.json", "README.md", "model.safetensors", "model.tflite", "model_int8.tflite", "model.onnx"}
    assert names <= {p.name for p in d.iterdir()}
    mj = json.loads((d / "model.json").read_text())
    assert mj["schema_version"] == 1 and mj["architecture"] == "resnet20"
    assert mj["input"]["shape_nchw"] == [1, 3, 32, 32] and len(mj["input"]["mean"]) == 3
    assert mj["output"]["class_names"][0] == "circle" and mj["output"]["shape"] == [10]
    arts = {a["format"]: a for a in mj["artifacts"]}
    assert set(arts) == set(FORMATS)
    assert arts["tflite"]["io"]["input"]["layout"] == "NHWC" and arts["onnx"]["io"]["input"]["layout"] == "NCHW"
    q = arts["tflite-int8"]["io"]
    assert q["input"]["dtype"] == "int8" and q["output"]["dtype"] == "int8"
    assert q["input"]["quantization"]["scale"] > 0 and -128 <= q["input"]["quantization"]["zero_point"] <= 127
    assert q["output"]["range"] == "top2" and "saturate" in q["output"]["range_note"]
    assert arts["tflite-int8"]["int8_ptq"] == ["cle"] and "int8_ptq" not in arts["tflite"]  # the default
    for fmt in ("tflite", "onnx"):
        assert arts[fmt]["parity"]["max_abs"] <= 1e-4 and arts[fmt]["parity"]["top1_agreement"] == 1.0
        assert arts[fmt]["host_latency"]["median_ms"] > 0
    host = {"tflite": "host-litert", "tflite-int8": "host-litert-int8", "onnx": "host-onnxruntime"}
    for fmt, target in host.items():  # timed by the host target's protocol, as measure times
        lat = arts[fmt]["host_latency"]
        passes = load_target(target).measure.passes
        assert lat["protocol"].startswith(f"{target}: {passes} passes") and len(lat["pass_medians_ms"]) == passes
        assert lat["median_ms"] == pytest.approx(min(lat["pass_medians_ms"]), rel=1e-4)
    assert arts["tflite-int8"]["parity"]["top1_agreement"] >= 0.95
    import hashlib
    assert hashlib.sha256((d / "model.tflite").read_bytes()).hexdigest() == arts["tflite"]["sha256"]
    assert Bundle.load(d).artifact("onnx").file == "model.onnx"
    loaded = Bundle.load(d)  # typed, and back to model.json unchanged
    assert loaded.to_dict()["artifacts"] == mj["artifacts"]
    assert loaded.artifact("tflite-int8").io.output.quantization.scale == q["output"]["quantization"]["scale"]
    assert loaded.artifact("tflite").parity.max_abs == arts["tflite"]["parity"]["max_abs"]
    readme = (d / "README.md").read_text()
    assert "32x32" in readme and f"{mj['input']['mean'][0]:.4f}" in readme
    assert "Interpreter(" in readme and ("MLModel(" in readme) == ("coreml" in FORMATS)


def test_tflite_artifacts_have_no_transpose(bundle):
    for f in ("model.tflite", "model_int8.tflite"):
        ops = tflite_op_names(bundle.path / f)
        assert "CONV_2D" in ops and "TRANSPOSE" not in ops, (f, sorted(set(ops)))


def test_int8_calibration_reads_the_given_data(baseline, tmp_path):
    spec = baseline.edgeprune_spec.input
    small = randomize_bn(TinyNet())
    x0 = torch.zeros(1, 3, 32, 32)
    a = to_tflite_int8(small, tmp_path / "a.tflite", x0, _calib(spec, 100), min_images=100)
    b = to_tflite_int8(small, tmp_path / "b.tflite", x0, _calib(spec, 100, scale=3.0), min_images=100)
    qa, qb = open_session(a).input_quantization, open_session(b).input_quantization
    assert qb[0] == pytest.approx(3 * qa[0], rel=0.05), (qa, qb)  # inputs 3x wider -> 3x the scale
    with pytest.raises(ExportError, match="got 50 images; need at least 100"):
        to_tflite_int8(small, tmp_path / "c.tflite", x0, _calib(spec, 50), min_images=100)
    assert not (tmp_path / "c.tflite").exists()


def test_int8_top2_logit_range_covers_the_deciding_logits(baseline, tmp_path):
    spec = baseline.edgeprune_spec.input
    x0 = torch.zeros(1, 3, 32, 32)
    calib = _calib(spec, 100)
    full = to_tflite_int8(baseline, tmp_path / "full.tflite", x0, calib, min_images=100, logits="full")
    top2 = to_tflite_int8(baseline, tmp_path / "top2.tflite", x0, calib, min_images=100, logits="top2")
    (sf, _), (st, zt) = open_session(full).output_quantization, open_session(top2).output_quantization
    with torch.no_grad():
        z = baseline(torch.cat(calib))
    runner_up = z.topk(2).values[:, 1]
    floor, ceiling = st * (-128 - zt), st * (127 - zt)
    # ResNet-20's lowest logits lie far below every runner-up logit: the top2 range is narrower
    assert st < 0.8 * sf, (st, sf)
    assert float(z.min()) < floor <= float(runner_up.min()) and ceiling >= float(z.max()) - st


class _FeatureMap(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_int8_logit_range_errors(baseline, tmp_path):
    spec = baseline.edgeprune_spec.input
    x0 = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ConfigError, match="logits='top5' is not an int8 output range"):
        to_tflite_int8(baseline, tmp_path / "a.tflite", x0, _calib(spec, 100), logits="top5")
    with pytest.raises(ExportError, match=r"gives \(1, 32, 32, 4\); export with logits='full'"):
        to_tflite_int8(_FeatureMap().eval(), tmp_path / "b.tflite", x0, _calib(spec, 100), min_images=100)
    assert not (tmp_path / "b.tflite").exists()
    with pytest.raises(ConfigError, match="int8_logits='top5'"):
        ExportConfig(formats=("tflite-int8",), int8_logits="top5")


class _Broken(torch.nn.Module):
    """Runs in eager mode; its data-dependent Python branch cannot be exported."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x).mean((2, 3))
        return y * 2 if float(y.sum()) > 0 else y


def test_failed_export_leaves_no_artifact_and_no_model_json(tmp_path):
    from edgeprune.models.checkpoint import ModelSpec
    from edgeprune.types import InputSpec

    spec = ModelSpec("tests.bundle.test_bundle:_Broken", {}, InputSpec())
    with pytest.raises(ExportError):
        edgeprune.export(_Broken(), tmp_path, config=ExportConfig(formats=("tflite",)), spec=spec)
    assert not (tmp_path / "model.tflite").exists() and not (tmp_path / "model.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model.tflite")]


def test_a_failed_re_export_leaves_the_previous_bundle_as_it_was(tmp_path):
    from edgeprune.models.checkpoint import ModelSpec
    from edgeprune.types import InputSpec

    torch.manual_seed(0)
    good = randomize_bn(TinyNet())
    spec = ModelSpec("tests.nets:tiny_net", {}, InputSpec())
    out = tmp_path / "b"
    edgeprune.export(good, out, config=ExportConfig(formats=("onnx",)), spec=spec)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    broken = ModelSpec("tests.bundle.test_bundle:_Broken", {}, InputSpec())
    with pytest.raises(ExportError):
        edgeprune.export(_Broken(), out, config=ExportConfig(formats=("tflite",)), spec=broken,
                         force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no build directory left behind


def test_export_leaves_the_callers_model_in_its_mode(tmp_path):
    from edgeprune.models.checkpoint import ModelSpec
    from edgeprune.types import InputSpec

    model = TinyNet().train()
    edgeprune.export(model, tmp_path / "b", config=ExportConfig(formats=("onnx",)),
                     spec=ModelSpec("tests.nets:tiny_net", {}, InputSpec()))
    assert model.training and all(m.training for m in model.modules())


def test_export_argument_errors(baseline, tmp_path):
    with pytest.raises(ConfigError, match="unknown export format"):
        ExportConfig(formats=("tflite-int4",))
    with pytest.raises(ConfigError, match="needs calibration data"):
        edgeprune.export(baseline, tmp_path, config=ExportConfig(formats=("tflite-int8",)))


def test_validate_on_host_passes_with_accuracy(bundle, baseline):
    spec = baseline.edgeprune_spec.input
    test = data.open("shapes:test", labels=True, size=spec.hw, limit=500)
    report = edgeprune.validate(bundle, data.batches(test, 250, mean=spec.mean, std=spec.std))
    rows = {c.format: c for c in report.checks}
    assert set(rows) == set(FORMATS)
    for fmt in ("tflite", "onnx"):
        assert rows[fmt].status == "pass" and rows[fmt].max_abs <= 1e-4, str(report)
    i8 = rows["tflite-int8"]
    assert i8.images == 500 and i8.sqnr_db > 20 and i8.top1_agreement >= 0.97, str(report)
    assert abs(i8.top1 - i8.reference_top1) <= 0.02
    if "coreml" in rows:
        assert rows["coreml"].status in ("pass", "not checked"), str(report)
    assert report.ok == all(c.status != "fail" for c in report.checks)
    assert "model.onnx" in str(report)


def test_a_corrupted_artifact_fails_validation(bundle, baseline, tmp_path):
    import shutil

    import onnx
    from onnx import numpy_helper

    d = tmp_path / "b"
    shutil.copytree(bundle.path, d)
    m = onnx.load(d / "model.onnx")
    init = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(init).copy()
    w.flat[: w.size // 3] *= -1.0  # a third of the largest weight tensor flipped
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(m, d / "model.onnx")
    spec = baseline.edgeprune_spec.input
    test = data.open("shapes:test", labels=True, size=spec.hw, limit=100)
    report = edgeprune.validate(d, data.batches(test, 100, mean=spec.mean, std=spec.std))
    rows = {c.format: c for c in report.checks}
    assert rows["onnx"].status == "fail" and rows["tflite"].status == "pass"
    assert not report.ok and "FAILED" in str(report)


def test_validate_refuses_unknown_platforms_and_incomplete_bundles(bundle, tmp_path):
    from edgeprune.errors import TargetNotFoundError

    with pytest.raises(TargetNotFoundError, match="unknown target 'gpu'; known: .*arm64-emulated"):
        edgeprune.validate(bundle, [torch.zeros(2, 3, 32, 32)], on=("gpu",))
    with pytest.raises(ConfigError, match="validate on 'host'"):
        edgeprune.validate(bundle, [torch.zeros(2, 3, 32, 32)], on=("host-litert",))
    with pytest.raises(ExportError, match="no model.json"):
        Bundle.load(tmp_path)


def test_arm64_emulated_runtimes_agree_with_x86(bundle, baseline):
    from edgeprune.runtimes import arm64

    if not arm64.available():
        pytest.skip("aarch64 runtime not built: run scripts/make-arm64-runtime.sh")
    spec = baseline.edgeprune_spec.input
    test = data.open("shapes:test", labels=True, size=spec.hw, limit=64)
    report = edgeprune.validate(bundle, data.batches(test, 64, mean=spec.mean, std=spec.std),
                                on=("arm64-emulated",))
    rows = {c.format: c for c in report.checks}
    # fp32: gated against PyTorch by the host's bar, the difference to x86 reported
    for fmt in ("tflite", "onnx"):
        assert rows[fmt].status == "pass" and 0 <= rows[fmt].vs_x86_max_abs <= rows[fmt].bound, str(report)
    assert rows["tflite-int8"].vs_x86_max_abs == 0.0, str(report)  # int8: bit-exact
    assert rows["tflite-int8"].status == "pass", str(report)
    assert all(c.platform == "arm64-emulated (aarch64, qemu://neoverse-n1)" for c in report.checks)
    assert report.devices["arm64-emulated"]["machine"] == "aarch64"  # the agent said so, on ARM
