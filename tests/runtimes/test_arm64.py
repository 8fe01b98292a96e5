"""aarch64 LiteRT / ONNX Runtime under QEMU agree with the x86 runtimes (issue 5, item 7).

The emulated runtime is built by scripts/make-arm64-runtime.sh; without it the parity tests skip.
"""

import subprocess
import sys
from importlib.metadata import version

import numpy as np
import pytest
import torch

from edgeprune import convert, runtimes
from edgeprune.errors import ConfigError, MissingDependencyError, RuntimeAdapterError
from edgeprune.runtimes import arm64
from tests.nets import TinyNet, randomize_bn

ARM_VS_X86_ATOL = 1e-5  # issue 5 acceptance: aarch64 agrees with x86 within 1e-5 (fp32)
VS_TORCH_ATOL = 1e-4
N_INPUTS = 4


def _report(name, got, ref):
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    rel = diff.max() / max(float(np.abs(ref).max()), 1e-12)
    return (f"{name}: max abs {diff.max():.3g}, max rel {rel:.3g}, "
            f"argmax equal {(got.argmax(1) == ref.argmax(1)).mean():.3f}")


@pytest.fixture(scope="module")
def runtime():
    if not arm64.available():
        pytest.skip("aarch64 runtime not built: run scripts/make-arm64-runtime.sh")
    return arm64.versions()


@pytest.fixture(scope="module")
def artifacts(runtime, tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_bn(TinyNet())
    x = torch.randn(N_INPUTS, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).numpy()
    d = tmp_path_factory.mktemp("arm64")
    tfl = convert.to_tflite(model, d / "tiny.tflite", x[:1])
    onnx = convert.to_onnx(model, d / "tiny.onnx", x[:1])
    return x.numpy(), ref, tfl, onnx


def test_versions_match_the_host(runtime):
    import onnxruntime

    assert runtime["numpy"] == np.__version__
    assert runtime["onnxruntime"] == onnxruntime.__version__
    assert runtime["ai-edge-litert"] == version("ai-edge-litert")
    assert int(runtime["qemu"].split(".")[0]) >= 10, runtime
    assert runtime["python"].startswith("3.11."), runtime


def test_fp32_tflite_and_onnx_match_x86(artifacts):
    x, ref, tfl, onnx = artifacts
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    arm_tfl, arm_onnx = arm64.run_artifacts([(tfl, nhwc), (onnx, x)], cpu="neoverse-n1")
    # x86: the same artifacts, same batching (TFLite batch 1 per sample; ONNX dynamic batch)
    x86_tfl = runtimes.open_session(tfl, threads=1).run_batched(x)
    x86_onnx = runtimes.open_session(onnx, threads=1).run(x)
    for name, arm, x86 in (("tflite", arm_tfl, x86_tfl), ("onnx", arm_onnx, x86_onnx)):
        assert arm.dtype == np.float32 and arm.shape == (N_INPUTS, 10), (name, arm.dtype, arm.shape)
        msg = _report(f"{name} aarch64 vs x86", arm, x86)
        assert np.abs(arm - x86).max() <= ARM_VS_X86_ATOL, msg
        assert (arm.argmax(1) == x86.argmax(1)).all(), msg
        msg = _report(f"{name} aarch64 vs torch", arm, ref)
        assert np.abs(arm - ref).max() <= VS_TORCH_ATOL, msg


def test_cortex_a72_matches_x86(artifacts):
    x, _, tfl, _ = artifacts
    arm = arm64.run_artifact(tfl, np.ascontiguousarray(x.transpose(0, 2, 3, 1)), cpu="cortex-a72")
    x86 = runtimes.open_session(tfl, threads=1).run_batched(x)
    assert np.abs(arm - x86).max() <= ARM_VS_X86_ATOL, _report("tflite cortex-a72 vs x86", arm, x86)


def test_wrong_input_fails_with_the_runners_message(artifacts):
    x, _, tfl, _ = artifacts
    with pytest.raises(RuntimeAdapterError, match=r"expects \(N, 32, 32, 3\) float32"):
        arm64.run_artifact(tfl, x)  # NCHW given to an NHWC artifact


def test_cpu_max_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="'max' CPU model computes int8"):
        arm64.run_artifact(tmp_path / "m.tflite", np.zeros((1, 4), np.float32), cpu="max")
    with pytest.raises(ConfigError, match="neoverse-n1, cortex-a72"):
        arm64.run_artifact(tmp_path / "m.tflite", np.zeros((1, 4), np.float32), cpu="cortex-a53")


def test_missing_runtime_says_how_to_build_it(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not run")
    empty = tmp_path / "cache"
    assert not arm64.available(empty)
    with pytest.raises(MissingDependencyError, match="make-arm64-runtime.sh --cache"):
        arm64.run_artifact(model, np.zeros((1, 4), np.float32), cache=empty)
    with pytest.raises(MissingDependencyError, match="not built"):
        arm64.versions(empty)


def test_half_built_cache_is_not_available(tmp_path):
    (tmp_path / "manifest.json").write_text('{"schema": 1}')
    assert not arm64.available(tmp_path)
    with pytest.raises(MissingDependencyError, match="unreadable"):
        arm64.versions(tmp_path)


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="suffix '.pt'"):
        arm64.run_artifact(tmp_path / "m.pt", np.zeros((1, 4), np.float32))
    with pytest.raises(ConfigError, match="does not exist"):
        arm64.run_artifact(tmp_path / "m.onnx", np.zeros((1, 4), np.float32))
    with pytest.raises(ConfigError, match="timeout_s=0"):
        arm64.run_artifact(tmp_path / "m.onnx", np.zeros((1, 4), np.float32), timeout_s=0)


def test_runner_refuses_to_run_off_aarch64(tmp_path):
    """The script the emulated Python runs exits at once on the x86 host, before any work."""
    runner = tmp_path / "runner.py"
    runner.write_text(arm64.RUNNER.read_text())
    proc = subprocess.run([sys.executable, "-I", "-S", str(runner), "x", "y", "z"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert "not 'aarch64'" in proc.stderr, proc.stderr
