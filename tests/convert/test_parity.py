"""ONNX and TFLite fp32 parity against PyTorch for every zoo model (and a tiny mixed net)."""

import numpy as np
import pytest
import torch

from edgeprune import convert, models, runtimes
from edgeprune.errors import ExportError
from tests.nets import randomize_bn

ATOL = 1e-4
N_INPUTS = 8


def _inputs(seed=0):
    return torch.randn(N_INPUTS, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _report(name, got, ref):
    diff = np.abs(got - ref)
    rel = diff.max() / max(float(np.abs(ref).max()), 1e-12)
    return f"{name}: max abs {diff.max():.3g}, max rel {rel:.3g}, argmax equal {(got.argmax(1) == ref.argmax(1)).mean():.3f}"


def _check(session, x, ref, name):
    got = np.concatenate([session.run(x[i:i + 1].numpy()) for i in range(len(x))])
    msg = _report(name, got, ref)
    assert np.abs(got - ref).max() <= ATOL, msg
    assert (got.argmax(1) == ref.argmax(1)).all(), msg


def _realistic_logits(model, x, target=10.0):
    """Deep nets at random init (no training, no zero-init residuals) produce logits in the
    thousands, where float32 rounding alone exceeds 1e-4. Scale the linear head so the largest
    logit is ~10, as in a trained classifier; the 1e-4 bound then means what it means there."""
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        peak = float(model(x).abs().max())
        head.weight.mul_(target / peak)
        head.bias.mul_(target / peak)


@pytest.fixture(scope="module", params=models.names() + ["tiny"])
def converted(request, tmp_path_factory):
    torch.manual_seed(0)
    if request.param == "tiny":
        from tests.nets import TinyNet
        model = randomize_bn(TinyNet())
    else:
        model = randomize_bn(models.create(request.param))
    x = _inputs()
    _realistic_logits(model, x)
    with torch.no_grad():
        ref = model(x).numpy()
    d = tmp_path_factory.mktemp(request.param)
    onnx_path = convert.to_onnx(model, d / "m.onnx", x[:1])
    tfl_path = convert.to_tflite(model, d / "m.tflite", x[:1])
    return request.param, x, ref, onnx_path, tfl_path


def test_onnx_parity(converted):
    name, x, ref, onnx_path, _ = converted
    sess = runtimes.open_session(onnx_path)
    _check(sess, x, ref, f"{name} onnx")
    # the batch axis is dynamic: the whole batch at once agrees too
    assert np.abs(sess.run(x.numpy()) - ref).max() <= ATOL


def test_onnx_is_valid_and_named(converted):
    import onnx

    _, _, _, onnx_path, _ = converted
    m = onnx.load(str(onnx_path))
    onnx.checker.check_model(m, full_check=True)
    assert [i.name for i in m.graph.input] == ["input"]
    assert [o.name for o in m.graph.output] == ["logits"]
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_tflite_parity(converted):
    name, x, ref, _, tfl_path = converted
    sess = runtimes.open_session(tfl_path, threads=1)
    assert sess.input_shape == (1, 3, 32, 32)
    _check(sess, x, ref, f"{name} tflite")


def test_tflite_has_no_transpose_and_nhwc_input(converted):
    from ai_edge_litert.interpreter import Interpreter

    _, _, _, _, tfl_path = converted
    ops = convert.tflite_op_names(tfl_path)
    assert "CONV_2D" in ops
    assert "TRANSPOSE" not in ops, sorted(set(ops))
    interp = Interpreter(model_path=str(tfl_path))
    assert interp.get_input_details()[0]["shape"].tolist() == [1, 32, 32, 3]


def test_export_does_not_touch_the_callers_model(tmp_path):
    m = models.create("resnet20").train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    convert.to_onnx(m, tmp_path / "m.onnx", torch.zeros(1, 3, 32, 32))
    assert m.training
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_bad_example_input(tmp_path):
    with pytest.raises(ExportError, match="4-D NCHW"):
        convert.to_onnx(models.create("resnet20"), tmp_path / "m.onnx", torch.zeros(3, 32, 32))
    assert not (tmp_path / "m.onnx").exists()


def test_failed_conversion_leaves_no_file(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
                return x * 2
            return x

    with pytest.raises(ExportError):
        convert.to_onnx(Bad(), tmp_path / "m.onnx", torch.ones(1, 3, 8, 8))
    with pytest.raises(ExportError):
        convert.to_tflite(Bad(), tmp_path / "m.tflite", torch.ones(1, 3, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_op_names_on_garbage(tmp_path):
    p = tmp_path / "x.tflite"
    p.write_bytes(b"\x00" * 3)
    with pytest.raises(ExportError, match="not a TFLite flatbuffer"):
        convert.tflite_op_names(p)


def test_feature_map_output_is_nhwc_in_tflite_and_nchw_from_the_session(tmp_path):
    torch.manual_seed(0)
    m = randomize_bn(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)))
    x = torch.randn(1, 3, 8, 8)
    path = convert.to_tflite(m, tmp_path / "fm.tflite", x)
    assert "TRANSPOSE" not in convert.tflite_op_names(path)
    got = runtimes.open_session(path).run(x.numpy())
    with torch.no_grad():
        ref = m(x).numpy()
    assert got.shape == ref.shape == (1, 8, 8, 8)
    assert np.abs(got - ref).max() <= ATOL, _report("feature map", got.reshape(1, -1), ref.reshape(1, -1))
