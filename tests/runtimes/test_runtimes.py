import numpy as np
import pytest
import torch

from edgeprune import convert, runtimes
from edgeprune.errors import ConfigError, RuntimeAdapterError
from edgeprune.runtimes.base import time_session


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from tests.nets import TinyNet, randomize_bn

    torch.manual_seed(0)
    m = randomize_bn(TinyNet())
    d = tmp_path_factory.mktemp("rt")
    x = torch.zeros(1, 3, 16, 16)
    return convert.to_onnx(m, d / "t.onnx", x), convert.to_tflite(m, d / "t.tflite", x)


def test_registry():
    assert runtimes.names() == ["litert", "onnxruntime"]
    with pytest.raises(ConfigError, match="already registered"):
        runtimes.register("litert", lambda p, threads: None)


@pytest.mark.parametrize("which", [0, 1])
def test_timing_stats_are_consistent(artifacts, which):
    s = runtimes.open_session(artifacts[which], threads=1)
    st = time_session(s, np.zeros((1, 3, 16, 16), np.float32), warmup=2, runs=15)
    assert st.runs == 15 and len(st.samples_ms) == 15
    assert 0 < st.p10_ms <= st.median_ms <= st.p90_ms
    assert st.iqr_ms >= 0 and st.threads == 1
    assert st.runtime == s.runtime and st.runtime_version not in ("", "unknown")


@pytest.mark.parametrize("which", [0, 1])
def test_wrong_input_shape_raises(artifacts, which):
    s = runtimes.open_session(artifacts[which])
    with pytest.raises(RuntimeAdapterError, match="does not match"):
        s.run(np.zeros((1, 3, 17, 16), np.float32))


def test_run_batched_on_fixed_batch_tflite(artifacts):
    s = runtimes.open_session(artifacts[1])
    x = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    y = s.run_batched(x)
    assert y.shape == (3, 10)
    assert np.allclose(y[1], s.run(x[1:2])[0])


def test_unknown_runtime_and_suffix(tmp_path, artifacts):
    with pytest.raises(ConfigError, match="unknown runtime 'tvm'"):
        runtimes.open_session(artifacts[0], runtime="tvm")
    with pytest.raises(ConfigError, match="cannot tell the runtime"):
        runtimes.open_session(tmp_path / "m.bin")
    with pytest.raises(ConfigError, match="threads=0"):
        runtimes.open_session(artifacts[0], threads=0)


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_garbage_artifact_raises(tmp_path, suffix):
    p = tmp_path / f"bad{suffix}"
    p.write_bytes(b"garbage" * 10)
    with pytest.raises(RuntimeAdapterError, match="cannot load"):
        runtimes.open_session(p)


def test_bad_timing_protocol(artifacts):
    s = runtimes.open_session(artifacts[0])
    with pytest.raises(RuntimeAdapterError, match="runs=0"):
        time_session(s, np.zeros((1, 3, 16, 16), np.float32), runs=0)
