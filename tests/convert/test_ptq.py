"""Label-free PTQ steps before int8 conversion: BatchNorm folding and cross-layer equalization
keep the float function, AdaRound puts weights on the converter's int8 grid and lowers the
layer error, bias correction zeroes the mean per-channel error, and the converted int8 model
is the prepared model's."""

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune import models
from edgeprune.bundle import ExportConfig
from edgeprune.convert import simulate_int8, to_tflite_int8
from edgeprune.convert.ptq import (
    _pairs,
    check_ptq_steps,
    equalize,
    fold_batchnorm,
    prepare_int8,
    quantize_weight,
)
from edgeprune.errors import ConfigError, ExportError
from edgeprune.runtimes import open_session
from tests.nets import randomize_bn

X = torch.randn(48, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _resnet20():
    torch.manual_seed(0)
    return randomize_bn(models.create("resnet20")).eval()


def _vgg_like():
    torch.manual_seed(0)
    return randomize_bn(nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU6(),  # not a pair
        nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, 10))).eval()


@pytest.mark.parametrize("make", [_resnet20, _vgg_like])
def test_folding_and_equalization_keep_the_float_function(make):
    model = make()
    with torch.no_grad():
        ref = model(X)
        folded = fold_batchnorm(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded(X), ref, atol=1e-4, rtol=1e-4)
        pairs = _pairs(folded)
        n = equalize(folded)
        torch.testing.assert_close(folded(X), ref, atol=1e-4, rtol=1e-4)
    assert n == len(pairs) > 0
    mods = dict(folded.named_modules())
    for a, b in pairs:  # both sides of every pair end with the same per-channel range
        ra = mods[a].weight.abs().reshape(mods[a].weight.shape[0], -1).amax(1)
        wb = mods[b].weight.transpose(0, 1)
        rb = wb.abs().reshape(wb.shape[0], -1).amax(1)
        torch.testing.assert_close(ra, rb, rtol=2e-3, atol=1e-6)
    if make is _resnet20:  # conv1 -> relu -> conv2 in each of the 9 blocks; never across an add
        assert sorted(pairs) == sorted((f"layer{s}.{i}.conv1", f"layer{s}.{i}.conv2")
                                       for s in (1, 2, 3) for i in range(3))
    else:  # through max pooling; through global pooling + flatten into the head; not through ReLU6
        assert sorted(pairs) == [("0", "4"), ("7", "12")]


def test_adaround_puts_weights_on_the_int8_grid_and_lowers_the_layer_error():
    model = _resnet20()
    prepared, report = prepare_int8(model, X, ["adaround"], iters=150, batch=8)
    layers = [m for m in prepared.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert report.layers == len(layers) == 22 and report.steps == ("adaround",)
    for m in layers:  # on the grid the converter quantises to: its rounding changes nothing
        torch.testing.assert_close(quantize_weight(m.weight), m.weight, rtol=0, atol=1e-6)
    original = [m for m in fold_batchnorm(model).modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m, o in zip(layers, original, strict=True):  # same scale: each channel's extreme kept
        torch.testing.assert_close(m.weight.abs().flatten(1).amax(1), o.weight.abs().flatten(1).amax(1))
    assert report.rel_error_after < 0.8 * report.rel_error_before, report
    assert any(not torch.equal(m.weight, quantize_weight(o.weight)) for m, o in zip(layers, original, strict=True))


def test_bias_correction_zeroes_the_mean_channel_error_of_int8_weights():
    model = _vgg_like()
    xp = X.abs()  # inputs with a mean: weight rounding then shifts each channel's mean
    prepared, report = prepare_int8(model, xp, ["bias_correction"])
    folded = fold_batchnorm(model)
    first, ref = prepared[0], folded[0]
    with torch.no_grad():
        y = ref(xp)  # the first layer's input is the image: the same for both
        got = nn.functional.conv2d(xp, quantize_weight(first.weight), first.bias, padding=1)
        plain = nn.functional.conv2d(xp, quantize_weight(ref.weight), ref.bias, padding=1)
    assert (got - y).mean((0, 2, 3)).abs().max() < 1e-5
    assert (plain - y).mean((0, 2, 3)).abs().max() > 1e-4  # there was a bias to correct
    assert torch.equal(first.weight, ref.weight)  # only the bias moved
    assert report.rel_error_after <= report.rel_error_before


def test_the_int8_model_is_converted_from_the_prepared_model(tmp_path):
    model = _vgg_like()
    calib = [X[i:i + 16] for i in range(0, 48, 16)]
    path = to_tflite_int8(model, tmp_path / "m.tflite", X[:1], calib, min_images=48, logits="full",
                          ptq=["cle", "adaround", "bias_correction"])
    sess = open_session(path)
    got = sess.run_batched(X.numpy())
    with torch.no_grad():
        ref = model(X).numpy()
    span = ref.max() - ref.min()
    assert np.abs(got - ref).max() < 0.1 * span  # int8: close, not equal
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_the_int8_simulation_is_the_converted_model_and_can_keep_float_weights(tmp_path):
    """simulate_int8 runs in PyTorch what to_tflite_int8 converts: the runtime's outputs are
    the simulation's (the same int8 level, or the next one where the integer kernels round
    differently); with weights=False only activations are rounded, and the error is smaller."""
    model = _vgg_like()
    calib = [X[i:i + 16] for i in range(0, 48, 16)]
    sess = open_session(to_tflite_int8(model, tmp_path / "m.tflite", X[:1], calib, min_images=48, logits="full"))
    got = sess.run_batched(X.numpy())
    sim = simulate_int8(model, X[:1], calib, min_images=48, logits="full")(X).numpy()
    acts = simulate_int8(model, X[:1], calib, min_images=48, logits="full", weights=False)(X).numpy()
    with torch.no_grad():
        ref = model(X).numpy()
    step = sess.output_quantization[0]
    assert (got == sim).mean() >= 0.9 and np.abs(got - sim).max() <= 1.01 * step
    assert np.abs(got - ref).max() > step  # int8 is not float: the comparison above can fail
    assert not np.array_equal(acts, sim)
    assert ((acts - ref) ** 2).mean() < ((sim - ref) ** 2).mean()


def test_ptq_step_names_are_checked():
    assert check_ptq_steps(["bias_correction", "cle"]) == ("cle", "bias_correction")  # run order
    with pytest.raises(ExportError, match=r"choose distinct steps from \['cle', 'adaround', 'bias_correction'\]"):
        check_ptq_steps(["adaroud"])
    with pytest.raises(ExportError, match="must be a list"):
        check_ptq_steps("cle")
    with pytest.raises(ConfigError, match=r"ExportConfig.int8_ptq=\['cle', 'cle'\] is invalid"):
        ExportConfig(int8_ptq=("cle", "cle"))
    assert ExportConfig.from_dict(ExportConfig(int8_ptq=("adaround",)).to_dict()).int8_ptq == ("adaround",)


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else -self.conv(x)  # data-dependent: fx cannot trace


def test_an_untraceable_model_is_refused_with_the_fix():
    with pytest.raises(ExportError, match=r"need a torch.fx-traceable model; .*CLI: --int8-ptq none"):
        prepare_int8(_Untraceable(), X[:4], ["cle"])
