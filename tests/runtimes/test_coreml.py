"""CoreML ML-program export, checked off macOS by the numpy reference interpreter that reads the
saved package (spec + weight file): parity against PyTorch, corruption, unsupported ops,
atomic writes and the metadata an app developer reads."""

from __future__ import annotations

import json
import shutil
import struct
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune import models
from edgeprune.convert.coreml import to_coreml
from edgeprune.errors import (
    ConfigError,
    DataError,
    ExportError,
    MissingDependencyError,
    ParityError,
)
from edgeprune.runtimes.coreml_ref import (
    SUPPORTED_OPS,
    UnsupportedOpError,
    load_mlpackage,
    mlpackage_metadata,
    run_mlpackage,
)
from edgeprune.types import InputSpec
from tests.nets import TinyNet, randomize_bn

pytest.importorskip("coremltools", reason="coremltools is not installed: pip install 'edgeprune[coreml]'")

FP32_ATOL = 1e-4
# fp16 storage of every tensor, logits peaking at ~10: measured max abs 0.004-0.01 (tiny net
# and zoo models); 0.05 leaves room without hiding a wrong op (a wrong op is off by > 1)
FP16_ATOL = 0.05
ZOO_TOP1 = 0.99
N_TINY = 16
N_ZOO = 100  # >= 99% top-1 agreement then tolerates one flip at a genuine near-tie
SPEC = InputSpec(shape=(3, 32, 32), mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26),
                 class_names=tuple(f"class{i}" for i in range(10)))


def _inputs(n, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _realistic_logits(model, x, target=10.0):
    """Scale the linear head so the largest logit is ~10, as in a trained classifier (deep nets
    at random init give logits in the thousands, where fp16 error bounds mean nothing)."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        peak = float(model(x).abs().max())
        head.weight.mul_(target / peak)
        head.bias.mul_(target / peak)


def _report(name, got, ref):
    diff = np.abs(got - ref)
    rel = diff.max() / max(float(np.abs(ref).max()), 1e-12)
    agree = (got.argmax(1) == ref.argmax(1)).mean()
    return f"{name}: max abs {diff.max():.3g}, max rel {rel:.3g}, top-1 agreement {agree:.3f}"


def _strip_hash(package):
    """Remove the recorded weight hash, so the interpreter must notice corruption by itself."""
    from coremltools.proto import Model_pb2

    path = package / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec = Model_pb2.Model()
    spec.ParseFromString(path.read_bytes())
    del spec.description.metadata.userDefined["weights_sha256"]
    path.write_bytes(spec.SerializeToString())


def _first_blob(package):
    """(path of weight.bin, offset of the first blob record, offset and size of its data)."""
    wpath = package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    sentinel, _, size, data = struct.unpack_from("<IIQQ", wpath.read_bytes(), 64)
    assert sentinel == 0xDEADBEEF
    return wpath, 64, data, size


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_bn(TinyNet())
    x = _inputs(N_TINY, seed=1)
    _realistic_logits(model, x)
    with torch.no_grad():
        ref = model(x).numpy()
    d = tmp_path_factory.mktemp("tiny")
    pkgs = {p: to_coreml(model, d / f"tiny_{p}.mlpackage", x[:1], precision=p, input_spec=SPEC)
            for p in ("fp32", "fp16")}
    return model, x, ref, pkgs


@pytest.fixture(scope="module", params=models.names())
def zoo_fp16(request, tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_bn(models.create(request.param))
    x = _inputs(N_ZOO, seed=2)
    _realistic_logits(model, x)
    with torch.no_grad():
        ref = model(x).numpy()
    path = to_coreml(model, tmp_path_factory.mktemp(request.param) / "m.mlpackage", x[:1])
    return request.param, x, ref, path


class OpsNet(nn.Module):
    """Ops the zoo does not produce: strided/dilated/grouped/depthwise-multiplier convs,
    relu6/clip/sigmoid/hard-sigmoid/tanh/leaky-relu/silu, sub/mul/div, concat, an unfused
    batch norm, constant and reflect pad, max/avg pool with padding and ceil mode (with an
    overhang), matmul with a transpose, softmax, permute and mean."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=2, dilation=2)
        self.c2 = nn.Conv2d(8, 8, 3, padding="same", groups=2)
        self.c3 = nn.Conv2d(8, 16, 3, padding=1, groups=8, bias=False)
        self.bn = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        a = F.relu6(self.c1(x))  # 16x16
        b = torch.sigmoid(self.c2(a)) * torch.tanh(a) - a / 3
        c = F.leaky_relu(self.c3(b), 0.1)
        y = torch.cat([a, b, c], 1)
        y = self.bn(F.hardsigmoid(y) + torch.clamp(y, -1, 2))
        y = F.pad(y, (1, 0, 0, 1))  # 17x17
        y = F.max_pool2d(y, 3, 2, padding=1, ceil_mode=True)  # 9x9
        y = F.pad(y, (1, 0, 1, 0), mode="reflect")  # 10x10
        y = F.max_pool2d(y, 3, 2, ceil_mode=True)  # 5x5, the last window overhangs
        y = F.avg_pool2d(y, 2, 2, ceil_mode=True)  # 3x3, the last window overhangs
        y = y + F.avg_pool2d(y, 3, 1, padding=1, count_include_pad=False)
        n = y.flatten(2)
        att = torch.softmax(torch.matmul(n, n.transpose(1, 2)) / 16, -1)
        z = torch.matmul(att, n).permute(0, 2, 1).mean(1)
        return self.fc(F.silu(z))


# ------------------------------------------------------------------------------ parity


def test_tiny_fp32_parity(tiny):
    _, x, ref, pkgs = tiny
    got = run_mlpackage(pkgs["fp32"], x.numpy())
    msg = _report("tiny fp32", got, ref)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.abs(got - ref).max() <= FP32_ATOL, msg
    assert (got.argmax(1) == ref.argmax(1)).all(), msg


def test_tiny_fp16_parity(tiny):
    _, x, ref, pkgs = tiny
    got = run_mlpackage(pkgs["fp16"], x.numpy())
    msg = _report("tiny fp16", got, ref)
    assert (got.argmax(1) == ref.argmax(1)).all(), msg
    assert np.abs(got - ref).max() <= FP16_ATOL, msg
    # really computed in fp16: not as close as the fp32 package
    assert np.abs(got - ref).max() > FP32_ATOL, msg


def test_fp16_program_casts_and_fp32_program_does_not(tiny):
    _, _, _, pkgs = tiny
    fp16 = load_mlpackage(pkgs["fp16"])
    fp32 = load_mlpackage(pkgs["fp32"])
    assert "cast" in fp16.op_types and "cast" not in fp32.op_types
    assert {"conv", "add", "relu", "reduce_mean", "linear"} <= set(fp16.op_types)
    assert fp16.input_name == "input" and fp16.input_shape == (1, 3, 32, 32)
    assert fp16.output_names == ["logits"]
    # one sample at a time and the whole batch agree exactly
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    whole = fp16.run(x)
    assert np.array_equal(whole, np.concatenate([fp16.run(x[i:i + 1]) for i in range(3)]))


def test_zoo_fp16_top1(zoo_fp16):
    name, x, ref, path = zoo_fp16
    got = run_mlpackage(path, x.numpy())
    msg = _report(f"{name} fp16", got, ref)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= ZOO_TOP1, msg
    assert np.abs(got - ref).max() <= 2 * FP16_ATOL, msg
    assert set(load_mlpackage(path).op_types) <= SUPPORTED_OPS


def test_ops_beyond_the_zoo_fp32_parity(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(OpsNet())
    x = _inputs(4, seed=3)
    with torch.no_grad():
        ref = model(x).numpy()
    path = to_coreml(model, tmp_path / "ops.mlpackage", x[:1], precision="fp32")
    ops = set(load_mlpackage(path).op_types)
    assert {"conv", "concat", "batch_norm", "pad", "max_pool", "avg_pool", "matmul",
            "transpose", "softmax", "relu6", "clip", "sigmoid", "sigmoid_hard", "silu",
            "leaky_relu", "tanh", "mul", "sub"} <= ops, sorted(ops)
    got = run_mlpackage(path, x.numpy())
    assert np.abs(got - ref).max() <= FP32_ATOL, _report("ops fp32", got, ref)


class V3Net(nn.Module):
    """MobileNetV3-style blocks (hard-swish, squeeze-excitation with hard-sigmoid, grouped and
    depthwise convs) and what mobile heads add: GELU, both upsampling modes, slices, a split,
    a concat of many inputs, layer norm, thresholds."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.Hardswish())
        self.group = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16))
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 4, 1), nn.ReLU(),
                                nn.Conv2d(4, 16, 1), nn.Hardsigmoid())
        self.norm = nn.LayerNorm(24)
        self.fc = nn.Linear(24 + 8, 10)

    def forward(self, x):
        y = self.stem(x)
        y = F.gelu(self.group(y)) + F.gelu(y, approximate="tanh") + F.threshold(y, 0.1, 0.0)
        d = F.hardswish(self.dw(y))
        y = y + d * self.se(d)
        up = F.interpolate(y, scale_factor=2, mode="nearest")
        lin = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
        corner = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)
        y = F.avg_pool2d(up + lin - corner, 2)
        a, b = torch.split(y, [6, 10], dim=1)
        crop = y[:, 2:10, 1:7, ::2]
        z = torch.cat([a.mean((2, 3)), b.amax((2, 3)), crop.mean((2, 3))], 1)
        return self.fc(torch.cat([self.norm(z), F.elu(z[:, :8])], 1))


@pytest.mark.parametrize("precision, atol", [("fp32", FP32_ATOL), ("fp16", FP16_ATOL)])
def test_mobile_ops_parity_fp32_and_fp16(tmp_path, precision, atol):
    torch.manual_seed(0)
    model = randomize_bn(V3Net()).eval()
    x = _inputs(8, seed=4)
    _realistic_logits(model, x)
    with torch.no_grad():
        ref = model(x).numpy()
    path = to_coreml(model, tmp_path / f"v3_{precision}.mlpackage", x[:1], precision=precision)
    ops = set(load_mlpackage(path).op_types)
    assert {"gelu", "layer_norm", "split", "slice_by_index", "upsample_nearest_neighbor",
            "upsample_bilinear", "sigmoid_hard", "concat", "conv", "thresholded_relu"} <= ops, sorted(ops)
    got = run_mlpackage(path, x.numpy())
    assert np.abs(got - ref).max() <= atol, _report(f"mobile ops {precision}", got, ref)
    assert (got.argmax(1) == ref.argmax(1)).all(), _report(f"mobile ops {precision}", got, ref)


# ------------------------------------------------------------------------------ corruption


def test_corrupted_weight_fails_the_recorded_hash(tiny, tmp_path):
    _, x, _, pkgs = tiny
    bad = shutil.copytree(pkgs["fp16"], tmp_path / "bad.mlpackage")
    wpath, _, data, _ = _first_blob(bad)
    buf = bytearray(wpath.read_bytes())
    buf[data + 5] ^= 0x01  # one bit of one weight
    wpath.write_bytes(bytes(buf))
    with pytest.raises(ParityError, match="SHA-256"):
        run_mlpackage(bad, x[:1].numpy())


def test_corrupted_weight_without_hash_changes_the_outputs(tiny, tmp_path):
    """Even without the recorded hash the interpreter reads the package's weights, so a
    corrupted weight file gives outputs far beyond the fp16 tolerance (no exception)."""
    _, x, ref, pkgs = tiny
    bad = shutil.copytree(pkgs["fp16"], tmp_path / "bad.mlpackage")
    _strip_hash(bad)
    assert np.abs(run_mlpackage(bad, x.numpy()) - ref).max() <= FP16_ATOL  # still intact
    wpath, _, data, size = _first_blob(bad)
    buf = bytearray(wpath.read_bytes())
    buf[data:data + size] = np.full(size // 2, 7.0, np.float16).tobytes()  # stem conv weights
    wpath.write_bytes(bytes(buf))
    got = run_mlpackage(bad, x.numpy())
    assert np.abs(got - ref).max() > 20 * FP16_ATOL, _report("corrupted", got, ref)


def test_corrupted_blob_record_and_missing_weights_raise(tiny, tmp_path):
    _, x, _, pkgs = tiny
    bad = shutil.copytree(pkgs["fp16"], tmp_path / "bad.mlpackage")
    _strip_hash(bad)
    wpath, record, _, _ = _first_blob(bad)
    buf = bytearray(wpath.read_bytes())
    buf[record:record + 4] = b"\x00\x00\x00\x00"
    wpath.write_bytes(bytes(buf))
    with pytest.raises(ParityError, match="sentinel"):
        run_mlpackage(bad, x[:1].numpy())
    buf[record + 8:record + 16] = struct.pack("<Q", 1 << 40)  # a size past the end of the file
    buf[record:record + 4] = struct.pack("<I", 0xDEADBEEF)
    wpath.write_bytes(bytes(buf))
    with pytest.raises(ParityError, match="corrupted"):
        run_mlpackage(bad, x[:1].numpy())
    wpath.unlink()
    with pytest.raises(ParityError, match="missing"):
        run_mlpackage(bad, x[:1].numpy())


def test_malformed_package_raises(tiny, tmp_path):
    _, x, _, pkgs = tiny
    with pytest.raises(ParityError, match="does not exist"):
        run_mlpackage(tmp_path / "nothing.mlpackage", x[:1].numpy())
    bad = shutil.copytree(pkgs["fp32"], tmp_path / "bad.mlpackage")
    (bad / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"\xff" * 64)
    with pytest.raises(ParityError, match="not a valid Model protobuf"):
        run_mlpackage(bad, x[:1].numpy())
    (bad / "Manifest.json").write_text("{")
    with pytest.raises(ParityError, match="Manifest.json"):
        mlpackage_metadata(bad)


def test_wrong_input_shape(tiny):
    _, _, _, pkgs = tiny
    with pytest.raises(DataError, match=r"\(N, 3, 32, 32\)"):
        run_mlpackage(pkgs["fp32"], np.zeros((1, 3, 16, 16), np.float32))


# ------------------------------------------------------------------------------ unsupported


def test_unsupported_op_raises_and_is_named(tmp_path):
    class Cumsum(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x).cumsum(1).mean((2, 3))

    path = to_coreml(Cumsum(), tmp_path / "cumsum.mlpackage", torch.zeros(1, 3, 8, 8),
                     precision="fp32")
    with pytest.raises(UnsupportedOpError, match="cumsum"):
        run_mlpackage(path, np.zeros((1, 3, 8, 8), np.float32))
    assert not issubclass(UnsupportedOpError, ParityError)  # "not checked", never "fail"/"pass"


# ------------------------------------------------------------------------------ export


def test_metadata_for_app_developers(tiny):
    _, _, _, pkgs = tiny
    meta = mlpackage_metadata(pkgs["fp16"])
    assert json.loads(meta["mean"]) == pytest.approx(list(SPEC.mean))
    assert json.loads(meta["std"]) == pytest.approx(list(SPEC.std))
    assert json.loads(meta["class_names"]) == list(SPEC.class_names)
    assert meta["layout"] == "NCHW" and meta["input_name"] == "input"
    assert json.loads(meta["input_shape"]) == [1, 3, 32, 32]
    assert meta["output_name"] == "logits" and meta["precision"] == "fp16"
    assert len(meta["weights_sha256"]) == 64

    import coremltools as ct

    spec = ct.models.utils.load_spec(str(pkgs["fp16"]))
    assert "0.49" in spec.description.metadata.shortDescription
    assert spec.description.metadata.author.startswith("edgeprune")
    # the raw logits stay an output (no ClassifierConfig replacing them by a label dict)
    assert [o.name for o in spec.description.output] == ["logits"]
    assert spec.description.output[0].type.WhichOneof("Type") == "multiArrayType"
    assert "class9" in spec.description.output[0].shortDescription
    inp = spec.description.input[0]
    assert inp.name == "input" and list(inp.type.multiArrayType.shape) == [1, 3, 32, 32]
    assert spec.WhichOneof("Type") == "mlProgram" and spec.specificationVersion >= 6  # iOS 15+


def test_export_without_input_spec_says_normalisation_is_unknown(tiny, tmp_path):
    model, x, _, _ = tiny
    meta = mlpackage_metadata(to_coreml(model, tmp_path / "m.mlpackage", x[:1]))
    assert "mean" not in meta and meta["normalisation"].startswith("unknown")


def test_export_is_quiet_and_leaves_the_callers_model_alone(tmp_path, capfd):
    m = TinyNet().train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    capfd.readouterr()
    to_coreml(m, tmp_path / "m.mlpackage", torch.zeros(1, 3, 32, 32))
    out, err = capfd.readouterr()
    assert "Running MIL" not in err and "Converting PyTorch" not in err and out == "", err[-500:]
    assert m.training
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_bad_arguments(tiny, tmp_path):
    model, x, _, _ = tiny
    with pytest.raises(ConfigError, match=r"\.mlpackage"):
        to_coreml(model, tmp_path / "m.mlmodel", x[:1])
    with pytest.raises(ConfigError, match="int8"):
        to_coreml(model, tmp_path / "m.mlpackage", x[:1], precision="int8")
    with pytest.raises(ConfigError, match="class names"):
        to_coreml(model, tmp_path / "m.mlpackage", x[:1],
                  input_spec=InputSpec(class_names=("a", "b")))
    with pytest.raises(ExportError, match="4-D NCHW"):
        to_coreml(model, tmp_path / "m.mlpackage", x[0])
    assert list(tmp_path.iterdir()) == []


def test_failed_conversion_leaves_no_package(tmp_path):
    class Raises(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    class Unconvertible(nn.Module):  # traces, but coremltools has no converter for the op
        def forward(self, x):
            return torch.special.bessel_j0(x).flatten(1)

    with pytest.raises(ExportError, match="Raises"):
        to_coreml(Raises(), tmp_path / "a.mlpackage", torch.ones(1, 3, 8, 8))
    with pytest.raises(ExportError, match="Unconvertible"):
        to_coreml(Unconvertible(), tmp_path / "b.mlpackage", torch.ones(1, 3, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_reexport_replaces_only_after_success(tiny, tmp_path):
    model, x, _, _ = tiny
    path = to_coreml(model, tmp_path / "m.mlpackage", x[:1], precision="fp32")
    old_hash = mlpackage_metadata(path)["weights_sha256"]

    class Unconvertible(nn.Module):
        def forward(self, x):
            return torch.special.bessel_j0(x).flatten(1)

    with pytest.raises(ExportError):
        to_coreml(Unconvertible(), path, x[:1])
    assert mlpackage_metadata(path)["weights_sha256"] == old_hash  # the old package, intact
    to_coreml(model, path, x[:1], precision="fp16")
    assert mlpackage_metadata(path)["precision"] == "fp16"
    assert [p.name for p in tmp_path.iterdir()] == ["m.mlpackage"]  # no temp folders left


def test_missing_coremltools_names_the_extra(tiny, tmp_path, monkeypatch):
    model, x, _, pkgs = tiny
    monkeypatch.setitem(sys.modules, "coremltools", None)
    monkeypatch.setitem(sys.modules, "coremltools.proto", None)
    with pytest.raises(MissingDependencyError, match=r"edgeprune\[coreml\]"):
        to_coreml(model, tmp_path / "m.mlpackage", x[:1])
    with pytest.raises(MissingDependencyError, match=r"edgeprune\[coreml\]"):
        run_mlpackage(pkgs["fp32"], x[:1].numpy())
