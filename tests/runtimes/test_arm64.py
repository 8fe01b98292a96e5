"""The emulated aarch64 runtime (scripts/make-arm64-runtime.sh): its versions, and clear errors
when it is missing or half built. Running artifacts there goes through the device agent
(tests/runtimes/test_device.py)."""

from importlib.metadata import version

import numpy as np
import pytest

from edgeprune.errors import ConfigError, MissingDependencyError
from edgeprune.runtimes import arm64


def test_versions_match_the_host():
    if not arm64.available():
        pytest.skip("aarch64 runtime not built: run `make arm64-runtime`")
    import onnxruntime

    v = arm64.versions()
    assert v["numpy"] == np.__version__ and v["onnxruntime"] == onnxruntime.__version__
    assert v["ai-edge-litert"] == version("ai-edge-litert")
    assert int(v["qemu"].split(".")[0]) >= 10 and v["python"].startswith("3.11."), v


def test_missing_runtime_says_how_to_build_it(tmp_path):
    empty = tmp_path / "cache"
    assert not arm64.available(empty)
    with pytest.raises(MissingDependencyError, match="make-arm64-runtime.sh --cache"):
        arm64.agent_command(cache=empty)
    with pytest.raises(MissingDependencyError, match="not built"):
        arm64.versions(empty)


def test_half_built_cache_is_not_available(tmp_path):
    (tmp_path / "manifest.json").write_text('{"schema": 1}')
    assert not arm64.available(tmp_path)
    with pytest.raises(MissingDependencyError, match="unreadable"):
        arm64.versions(tmp_path)


def test_unchecked_cpu_models_are_refused():
    with pytest.raises(ConfigError, match="'max' CPU model computes int8"):
        arm64.agent_command("max")
    with pytest.raises(ConfigError, match="neoverse-n1, cortex-a72"):
        arm64.agent_command("cortex-a53")
