import pytest

from edgeprune.errors import ConfigError, TargetNotFoundError
from edgeprune.targets import Target, load_target, target_names

SHIPPED = ["android-arm64-litert", "android-arm64-litert-int8", "arm64-emulated",
           "arm64-emulated-cortex-a72", "host-litert", "host-litert-int8", "host-onnxruntime",
           "iphone-coreml", "macs", "raspberry-pi-4-litert", "raspberry-pi-4-litert-int8",
           "raspberry-pi-5-litert", "raspberry-pi-5-litert-int8"]


def test_shipped_targets_all_load():
    assert target_names() == SHIPPED
    for name in SHIPPED:
        t = load_target(name)
        assert t.name == name and t.round_to >= 1
        assert Target.from_dict(t.to_dict(), path=t.path) == t  # round trip


def test_host_litert_fields():
    t = load_target("host-litert")
    assert (t.runtime, t.precision, t.threads, t.delegate, t.round_to) == ("litert", "fp32", 1, "xnnpack", 16)
    assert t.is_local and not t.is_analytical
    assert (t.measure.warmup, t.measure.runs, t.measure.passes, t.measure.pass_interval_s) == (10, 20, 7, 1.0)
    assert load_target("raspberry-pi-4-litert").connection.startswith("agent://")
    assert load_target("macs").is_analytical
    pi = load_target("raspberry-pi-4-litert")
    assert pi.is_device and not pi.is_emulated and pi.token_env == "EDGEPRUNE_PI4_TOKEN"
    emu = load_target("arm64-emulated")
    assert emu.is_device and emu.is_emulated and emu.connection == "qemu://neoverse-n1"


@pytest.mark.parametrize("name", ["raspberry-pi-4-litert", "raspberry-pi-5-litert", "android-arm64-litert"])
def test_an_int8_device_target_is_its_fp32_siblings_device_at_int8(name):
    """One device, two precisions: the int8 target reaches the same agent with the same
    token, threads and protocol; only the precision (and the name) differ."""
    fp32, int8 = load_target(name), load_target(f"{name}-int8")
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    same = ("runtime", "threads", "delegate", "connection", "token_env", "device", "measure", "round_to")
    assert [getattr(int8, k) for k in same] == [getattr(fp32, k) for k in same]


def test_unknown_target_lists_known():
    with pytest.raises(TargetNotFoundError) as e:
        load_target("pi4")
    assert "pi4" in str(e.value) and "host-litert" in str(e.value) and "raspberry-pi-4-litert" in str(e.value)


def _write(tmp_path, body, name="mydev"):
    p = tmp_path / f"{name}.toml"
    p.write_text(body)
    return p


@pytest.mark.parametrize("body, field", [
    ('name = "mydev"\nruntime = "tvm"\n', "runtime = 'tvm'"),
    ('name = "mydev"\nruntime = "litert"\nthreads = -1\n', "threads = -1"),
    ('name = "mydev"\nruntime = "litert"\nround_to = 0\n', "round_to = 0"),
    ('name = "mydev"\nruntime = "litert"\nprecision = "int4"\n', "precision = 'int4'"),
    ('name = "mydev"\nruntime = "litert"\nconnection = "usb"\n', "connection = 'usb'"),
    ('name = "mydev"\nruntime = "litert"\nconnection = "agent://pi"\n', "needs a host and a port"),
    ('name = "mydev"\nruntime = "litert"\ntoken_env = "my token"\n', "token_env = 'my token'"),
    ('name = "mydev"\nruntime = "litert"\nremote_python = "python3; rm -rf ~"\n', "remote_python"),
    ('name = "mydev"\nruntime = "litert"\ntimeout_s = 0\n', "timeout_s = 0"),
    ('name = "mydev"\nruntime = "litert"\nthread = 2\n', "['thread']"),
    ('name = "mydev"\nruntime = "litert"\n[measure]\nruns = 2\n', "measure.runs = 2"),
    ('name = "mydev"\nruntime = "litert"\n[measure]\nrepeat = 2\n', "measure.repeat"),
    ('name = "mydev"\nruntime = "litert"\n[measure]\npasses = 0\n', "measure.passes = 0"),
    ('name = "mydev"\nruntime = "litert"\n[measure]\npass_interval_s = -1\n', "measure.pass_interval_s = -1"),
    ('name = "mydev"\nruntime = "litert"\nconnection = "agent://pi:7420"\n[measure]\npass_interval_s = 1\n',
     "the device agent does not space its passes"),
    ('name = "mydev"\nruntime = "litert"\n[tolerance]\ntop1_agreement = 0.9\n', "['tolerance']"),
    ('name = "mydev"\nruntime = "litert"\ndelegate = "gpu"\n', "delegate = 'gpu'"),
    ('name = "mydev"\nruntime = "onnxruntime"\ndelegate = "xnnpack"\n', "delegate = 'xnnpack'"),
    ('name = "mydev"\n', "missing required field 'runtime'"),
    ('name = "other"\nruntime = "litert"\n', "must match the file name"),
    ('name = "mydev"\nruntime = "litert"\nthreads = 0\n', "threads = 0"),
    ('name = "mydev\nruntime', "not valid TOML"),
])
def test_bad_fields_name_the_field(tmp_path, body, field):
    with pytest.raises(ConfigError) as e:
        load_target(_write(tmp_path, body))
    assert field in str(e.value)


def test_target_from_path(tmp_path):
    t = load_target(_write(tmp_path, 'name = "mydev"\nruntime = "onnxruntime"\nthreads = 2\n'))
    assert t.runtime == "onnxruntime" and t.threads == 2 and t.path.endswith("mydev.toml")
    with pytest.raises(TargetNotFoundError, match="does not exist"):
        load_target(tmp_path / "nope.toml")
