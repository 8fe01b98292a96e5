"""int8 latency on host-litert-int8: models measured through a synthetic calibration, int8
profiles, pruning toward an int8 budget and checking one predicted from an int8 profile."""

from pathlib import Path

import numpy as np
import pytest
import torch

import edgeprune
from edgeprune import convert
from edgeprune.errors import ConfigError, ProfileError
from edgeprune.profiling import LatencyProfile
from edgeprune.profiling.measurement import convert_for, synthetic_calibration
from edgeprune.runtimes import open_session
from edgeprune.targets import load_target
from tests.nets import TinyNet, randomize_bn

SHAPE = (3, 32, 32)
INT8 = "host-litert-int8"


@pytest.fixture(scope="module")
def int8_profile():
    torch.manual_seed(0)
    model = randomize_bn(TinyNet(width=32))
    return model, edgeprune.profile(model, target=INT8, input_shape=SHAPE, max_points=2)


def _tensors(path):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    return [(t["name"], tuple(t["shape"]), np.dtype(t["dtype"]).name, t["quantization"])
            for t in interp.get_tensor_details()]


def test_a_model_on_an_int8_target_is_converted_to_full_int8_and_measured(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(TinyNet())
    path = convert_for(model, load_target(INT8), tmp_path / "m.tflite", torch.zeros(1, *SHAPE))
    sess = open_session(path, runtime="litert")
    assert sess.has_int8_tensors and sess.input_dtype == np.int8 and sess.output_dtype == np.int8
    st = edgeprune.measure(model, target=INT8, input_shape=SHAPE)
    assert st.median_ms > 0 and st.passes == load_target(INT8).measure.passes


def test_the_synthetic_calibration_changes_ranges_only_never_the_graph(tmp_path):
    """Latency cannot depend on the calibration if the graph is the same: the ops, tensor
    shapes and dtypes of two differently calibrated conversions are equal; only the
    quantisation parameters differ (so the two calibrations really were different)."""
    torch.manual_seed(0)
    model = randomize_bn(TinyNet(width=16))
    x = torch.zeros(1, *SHAPE)
    a = convert_for(model, load_target(INT8), tmp_path / "a.tflite", x)
    other = [torch.rand((8, *SHAPE), generator=torch.Generator().manual_seed(1)) * 6 - 3]
    b = convert.to_tflite_int8(model, tmp_path / "b.tflite", x, other, min_images=8, logits="full")
    ta, tb = _tensors(a), _tensors(b)
    assert convert.tflite_op_names(a) == convert.tflite_op_names(b)
    assert [t[1:3] for t in ta] == [t[1:3] for t in tb]
    assert [t[3] for t in ta] != [t[3] for t in tb]
    cal = synthetic_calibration(x)
    assert cal[0].shape == (8, *SHAPE) and torch.equal(cal[0], synthetic_calibration(x)[0])


def test_an_int8_profile_is_int8_and_predicts_its_own_calibration(int8_profile, tmp_path):
    model, prof = int8_profile
    assert prof.target.precision == "int8" and prof.to_dict()["precision"] == "int8"
    full = next(c for c in prof.calibration if c["keep"] == 1.0)
    assert prof.predict_ms(model) == pytest.approx(full["predicted_ms"], rel=1e-9)
    back = LatencyProfile.load(prof.save(tmp_path / "p.json"), target=INT8)
    assert back.to_dict() == prof.to_dict()
    with pytest.raises(ProfileError, match="not 'host-litert'"):
        LatencyProfile.load(tmp_path / "p.json", target="host-litert")


def test_pruning_toward_an_int8_budget(int8_profile):
    model, prof = int8_profile
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(8, *SHAPE, generator=g) for _ in range(6)]
    reach = edgeprune.budget_range(model, target=INT8, profile=prof)
    budget = max(0.8 * reach.baseline, 1.05 * reach.floor)
    assert budget < reach.baseline, reach
    res = edgeprune.prune(model, data, target=INT8, budget_ms=budget, profile=prof,
                          config=edgeprune.PruneConfig(steps=12, update_interval=2))
    assert res.cost_unit == "ms" and res.predicted_cost <= res.budget < res.baseline_cost
    assert res.target == INT8 and prof.predict_ms(res.model) == pytest.approx(res.predicted_cost)


def test_check_predicts_an_int8_budget_from_an_int8_profile(int8_profile, tmp_path):
    from edgeprune.models.checkpoint import ModelSpec
    from edgeprune.types import InputSpec

    model, prof = int8_profile
    edgeprune.save(model, tmp_path / "m.safetensors",
                   spec=ModelSpec("tests.nets:tiny_net", {"width": 32}, InputSpec(shape=SHAPE)))
    prof.save(tmp_path / "p.json")
    budget = '[[budget]]\nartifact = "m.safetensors"\ntarget = "host-litert-int8"\nmax_ms = {}\n' \
             'mode = "predict"\nprofile = "p.json"\n'
    f = tmp_path / "edgeprune-budgets.toml"
    f.write_text(budget.format(1000) + budget.format(0.0001))
    report = edgeprune.check(f)
    assert [r.status for r in report.results] == ["pass", "fail"] and report.exit_code == 1
    assert report.results[0].ms == pytest.approx(prof.predict_ms(model))


def test_an_int8_target_of_another_runtime_is_refused(tmp_path):
    src = Path(load_target("host-onnxruntime").path).read_text()
    t = tmp_path / "ort-int8.toml"
    t.write_text(src.replace('name = "host-onnxruntime"', 'name = "ort-int8"')
                 .replace('precision = "fp32"', 'precision = "int8"'))
    with pytest.raises(ConfigError, match="onnxruntime at int8 cannot be measured"):
        edgeprune.measure(TinyNet(), target=str(t), input_shape=SHAPE)
