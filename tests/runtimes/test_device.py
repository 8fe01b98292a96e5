"""Devices through the real agent: HTTP on loopback and stdio processes, no mocked transport.
``run`` outputs equal a local run bit for bit; measurements carry the device's info; a
profile measured through an agent predicts the local measurement; the emulated aarch64
runtime is a device like any other (but never timed)."""

import json
import platform
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

import edgeprune
from edgeprune import agent, convert
from edgeprune.errors import ConfigError, RuntimeAdapterError
from edgeprune.runtimes import arm64
from edgeprune.runtimes.device import Device, _Stdio, connect
from edgeprune.targets import load_target
from tests.conftest import AgentProcess
from tests.nets import TinyNet, randomize_bn

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A TFLite fp32, a TFLite int8 and an ONNX artifact of one small net, and its inputs."""
    torch.manual_seed(0)
    model = randomize_bn(TinyNet())
    d = tmp_path_factory.mktemp("art")
    x = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(1))
    ex = x[:1]
    return {"tflite": convert.to_tflite(model, d / "m.tflite", ex),
            "int8": convert.to_tflite_int8(model, d / "q.tflite", ex, [torch.randn(32, *SHAPE)],
                                           min_images=32),
            "onnx": convert.to_onnx(model, d / "m.onnx", ex)}, x.numpy()


def _raw_inputs(path, x):
    """What the artifact takes: NHWC for TFLite, int8-quantised for an int8 input."""
    from edgeprune.runtimes.device import _artifact_input

    return _artifact_input(edgeprune.runtimes.open_session(path), x)


def _local_raw(path, inputs):
    """The artifact's raw outputs from this machine's runtime, the agent's way (one sample at
    a time for a batch-1 TFLite file, the whole batch for a dynamic-batch ONNX file)."""
    if str(path).endswith(".tflite"):
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(path), num_threads=1)
        it.allocate_tensors()
        i, o = it.get_input_details()[0], it.get_output_details()[0]
        ys = []
        for k in range(len(inputs)):
            it.set_tensor(i["index"], inputs[k:k + 1])
            it.invoke()
            ys.append(np.array(it.get_tensor(o["index"])))
        return np.concatenate(ys)
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: inputs})[0]


@pytest.fixture(scope="module", params=["http", "stdio"])
def device(request, http_agent, tmp_path_factory):
    d = tmp_path_factory.mktemp("t")
    if request.param == "http":
        p = d / "loop.toml"
        p.write_text(f'name = "loop"\nruntime = "litert"\nthreads = 1\nconnection = "agent://127.0.0.1:'
                     f'{http_agent.port}"\n[measure]\nwarmup = 2\nruns = 10\npasses = 2\n')
        dev = connect(load_target(p))
    else:  # the zero-install path: the agent's source streamed into a python over its stdin
        p = d / "stdio.toml"
        p.write_text('name = "stdio"\nruntime = "litert"\nthreads = 1\nconnection = "ssh://unused"\n'
                     "[measure]\nwarmup = 2\nruns = 10\npasses = 2\n")
        dev = Device(_Stdio([sys.executable, "-u"], "a local python over stdio"), load_target(p))
    yield dev
    dev.close()


def test_info_describes_the_machine_it_runs_on(device):
    info = device.info()
    assert info["protocol"] == agent.PROTOCOL and info["machine"] == platform.machine()
    assert info["cores"] >= 1 and info["cpu"]
    assert set(info["runtimes"]) == {"litert", "onnxruntime"}


def test_info_names_the_cpu_by_id_and_instruction_sets(device):
    info = device.info()
    assert {k: info[k] for k in ("cpu", "cpu_id", "isa")} == agent.cpu_identity()


X86 = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC
stepping	: 1
flags		: fpu sse4_1 avx avx2 fma avx512f avx512_vnni hypervisor
"""
PI5 = """processor	: 0
BogoMIPS	: 108.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x4
CPU part	: 0xd0b
CPU revision	: 1
"""


@pytest.mark.parametrize("text, want", [
    (X86, {"cpu": "AMD EPYC", "cpu_id": "AuthenticAMD family 25 model 17 stepping 1",
           "isa": ["avx", "avx2", "avx512_vnni", "avx512f", "fma", "sse4_1"]}),
    (PI5, {"cpu_id": "implementer 0x41 part 0xd0b variant 0x4",
           "isa": ["asimd", "asimddp", "asimdhp", "fphp"]}),
    ("", {"cpu_id": "unknown", "isa": []}),
])
def test_cpu_identity_reads_the_id_and_kernel_instruction_sets(text, want):
    got = agent.cpu_identity(text)
    assert {k: got[k] for k in want} == want


@pytest.mark.parametrize("kind", ["tflite", "int8", "onnx"])
def test_run_equals_a_local_run_bit_for_bit(device, artifacts, kind):
    paths, x = artifacts
    inputs = _raw_inputs(paths[kind], x)
    got = device.run(paths[kind], inputs)
    want = _local_raw(paths[kind], inputs)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want)
    if kind == "int8":
        assert got.dtype == np.int8


def test_run_sends_the_inputs_in_batches_and_keeps_their_order(device, artifacts):
    """A long run is split into requests of ``batch`` images (each under the agent's time
    limit on a slow device); the outputs are the same as one local run, in order."""
    paths, x = artifacts
    inputs = _raw_inputs(paths["tflite"], x)
    sent = []
    ask = device._ask

    def counting(req, *a, **kw):
        sent.append(len(agent.decode_array(req["inputs"], "inputs")) if req["op"] == "run" else None)
        return ask(req, *a, **kw)

    device._ask = counting
    try:
        got = device.run(paths["tflite"], inputs, batch=4)
    finally:
        device._ask = ask
    assert sent == [4, 2]
    assert np.array_equal(got, _local_raw(paths["tflite"], inputs))
    with pytest.raises(ConfigError, match="batch=0"):
        device.run(paths["tflite"], inputs, batch=0)


def test_measure_and_measure_many_report_every_pass_and_the_device(device, artifacts):
    paths, _ = artifacts
    tfl = [paths["tflite"], paths["int8"]]
    stats = device.measure_many(tfl)
    assert len(stats) == 2
    for st in stats:
        assert st.passes == 2 and len(st.pass_medians_ms) == 2
        assert st.median_ms == min(st.pass_medians_ms) and st.runs == 10
        assert st.device["machine"] == platform.machine() and st.runtime == "litert"
    one = device.measure_many([paths["onnx"]])
    assert one[0].runtime == "onnxruntime" and one[0].median_ms > 0


def test_measure_through_an_agent_target(http_agent, agent_target, artifacts):
    paths, _ = artifacts
    st = edgeprune.measure(paths["tflite"], target=agent_target(http_agent.port))
    assert st.device is not None and st.device["protocol"] == agent.PROTOCOL
    assert st.passes == 2 and "on " in str(st)


def test_profile_through_a_loopback_agent_is_measured_there_and_says_so(http_agent, agent_target):
    """Every point and calibration of the profile is timed by the agent, and its info is the
    profile's provenance. (How well such a profile predicts the local measurement is a
    measurement, made side by side in scripts/bench_agent_profile.py, not a unit-test bound.)"""
    from edgeprune.profiling import dense_copy

    model = dense_copy(edgeprune.models.create("resnet20")).eval()
    t = agent_target(http_agent.port, passes=2, runs=10)
    prof = edgeprune.profile(model, target=t, input_shape=SHAPE, max_points=2)
    assert prof.target.connection == f"agent://127.0.0.1:{http_agent.port}"
    assert prof.host["protocol"] == agent.PROTOCOL and prof.host["machine"] == platform.machine()
    assert prof.runtime_version == prof.host["runtimes"]["litert"]
    full = next(c for c in prof.calibration if c["keep"] == 1.0)
    assert len(full["pass_medians_ms"]) == 2  # the agent's passes, reported back
    assert prof.predict_ms(model) == pytest.approx(full["predicted_ms"], rel=1e-9)


def test_a_token_is_required_off_loopback_and_checked(agent_target, monkeypatch):
    r = subprocess.run([sys.executable, "-m", "edgeprune.cli", "agent", "--listen", "0.0.0.0:0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--token" in r.stderr
    a = AgentProcess("--token", "s3cret")
    try:
        t = agent_target(a.port, name="tok", token_env="EDGEPRUNE_TEST_TOKEN")
        monkeypatch.delenv("EDGEPRUNE_TEST_TOKEN", raising=False)
        with pytest.raises(ConfigError, match=r"\$EDGEPRUNE_TEST_TOKEN"):
            connect(load_target(t))
        monkeypatch.setenv("EDGEPRUNE_TEST_TOKEN", "wrong")
        with pytest.raises(RuntimeAdapterError, match="unauthorized"):
            connect(load_target(t)).info()
        monkeypatch.setenv("EDGEPRUNE_TEST_TOKEN", "s3cret")
        assert connect(load_target(t)).info()["protocol"] == agent.PROTOCOL
    finally:
        a.stop()


def test_a_protocol_mismatch_is_a_clear_error_on_both_sides(http_agent):
    req = urllib.request.Request(f"{http_agent.url}/v1/info", data=json.dumps({"protocol": 99}).encode(),
                                 method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    body = json.loads(e.value.read())
    assert e.value.code == 400 and body["error"]["type"] == "protocol_version"
    assert "speaks protocol 1" in body["error"]["message"] and "99" in body["error"]["message"]
    # the client side: an agent that answers with another protocol version
    import http.server
    import threading

    class Future(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            data = json.dumps({"protocol": 2, "ok": True}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Future)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        from edgeprune.runtimes.device import _Http

        target = edgeprune.targets.Target("future", "litert", connection=f"agent://127.0.0.1:{srv.server_port}")
        dev = Device(_Http("127.0.0.1", srv.server_port, None, 5, "future"), target)
        with pytest.raises(RuntimeAdapterError, match="speaks protocol 2, this edgeprune speaks 1"):
            dev.info()
    finally:
        srv.shutdown()


def test_an_unreachable_device_is_a_clear_error_within_its_timeout(agent_target):
    import socket
    import time

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    t = agent_target(port, name="gone", timeout_s=5)
    t0 = time.monotonic()
    with pytest.raises(RuntimeAdapterError, match="cannot reach the agent of target 'gone'"):
        connect(load_target(t)).info()
    assert time.monotonic() - t0 < 5 + 5  # within the target's timeout (and then some slack)


def test_the_agent_survives_malformed_requests(http_agent, artifacts):
    """A few of the fuzz script's kinds (scripts/fuzz_agent.py sends >= 1000)."""
    import base64
    import socket

    def post(body: bytes, op="run", headers=None):
        req = urllib.request.Request(f"{http_agent.url}/v1/{op}", data=body, method="POST",
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    assert post(b"{not json")[0] == 400
    assert post(json.dumps({"protocol": 1, "op": "run", "format": "tflite",
                            "artifact": base64.b64encode(b"\x00" * 64).decode(),
                            "inputs": {"dtype": "<f4", "shape": [1], "data": "AAAAAA=="}}).encode())[0] == 422
    assert post(json.dumps({"protocol": 1, "op": "run", "sneaky": 1}).encode())[0] == 400
    assert post(json.dumps({"protocol": 1, "op": "frobnicate"}).encode(), op="frobnicate")[0] == 404
    with socket.create_connection(("127.0.0.1", http_agent.port), timeout=30) as s:  # truncated body
        s.sendall(b"POST /v1/run HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"protocol\": 1")
        s.shutdown(socket.SHUT_WR)
        assert b"400" in s.recv(4096).split(b"\r\n")[0]
    status, body = post(json.dumps({"protocol": 1, "op": "info"}).encode(), op="info")
    assert status == 200 and body["ok"] and http_agent.alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_operation_over_its_time_limit_is_killed_and_the_agent_goes_on(agent_target, artifacts):
    """Operations run in a child of the agent's executor: one that runs too long is killed
    (504), the next is answered; SIGTERM leaves no executor behind."""
    import time
    from pathlib import Path

    paths, x = artifacts
    a = AgentProcess("--op-timeout-s", "2")
    try:
        kids = Path(f"/proc/{a.proc.pid}/task/{a.proc.pid}/children").read_text().split()
        assert len(kids) == 1  # the executor
        slow = connect(load_target(agent_target(a.port, name="slow", runs=10**5, passes=1)))
        with pytest.raises(RuntimeAdapterError, match="timeout: measure_many took longer than 2 s"):
            slow.measure_many([paths["tflite"]])
        dev = connect(load_target(agent_target(a.port, name="after")))
        inputs = _raw_inputs(paths["tflite"], x)
        assert np.array_equal(dev.run(paths["tflite"], inputs), _local_raw(paths["tflite"], inputs))
    finally:
        a.stop()

    def gone(pid: str) -> bool:
        try:
            return "\tZ" in Path(f"/proc/{pid}/status").read_text().split("State:")[1][:4]
        except OSError:
            return True

    deadline = time.monotonic() + 10
    while not gone(kids[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(kids[0]), "the executor outlived the agent"


def test_onnx_external_data_is_refused(http_agent, tmp_path):
    """An ONNX file whose tensor points at a file outside the agent's temporary directory."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros(4, np.float32), "W")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../../../../etc/hostname"), ("length", "16")):
        e = w.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("Add", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, 1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])], [w])
    path = tmp_path / "ext.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    assert onnx.load(str(path), load_external_data=False).graph.initializer[0].data_location == 1
    p = tmp_path / "l.toml"
    p.write_text(f'name = "l"\nruntime = "onnxruntime"\nconnection = "agent://127.0.0.1:{http_agent.port}"\n')
    with connect(load_target(p)) as dev, pytest.raises(RuntimeAdapterError, match="external data"):
        dev.run(path, np.zeros((1, 4, 1, 1), np.float32))


def test_ssh_streams_the_agent_through_the_devices_shell(tmp_path, monkeypatch, artifacts):
    """A stand-in `ssh` that does with its command what ssh does (joins it into one line for
    the device's shell) but on this machine: the bootstrap, its quoting and the streamed
    source all go the way they go over a real ssh session."""
    import os

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    ssh = bin_ / "ssh"
    ssh.write_text('#!/bin/sh\nwhile [ $# -gt 0 ]; do case "$1" in -o|-p) shift 2;; -*) shift;; *) break;; '
                   'esac; done\nshift\nexec sh -c "$*"\n')
    ssh.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    p = tmp_path / "pi.toml"
    p.write_text(f'name = "pi"\nruntime = "litert"\nconnection = "ssh://pi@raspberrypi.local:2222"\n'
                 f'remote_python = "{sys.executable}"\n')
    paths, x = artifacts
    with connect(load_target(p)) as dev:
        assert dev.info()["machine"] == platform.machine()
        inputs = _raw_inputs(paths["int8"], x)
        assert np.array_equal(dev.run(paths["int8"], inputs), _local_raw(paths["int8"], inputs))


# ---- the emulated aarch64 device ---------------------------------------------------------

@pytest.fixture(scope="module")
def emulated():
    if not arm64.available():
        pytest.skip("aarch64 runtime not built: run `make arm64-runtime`")
    dev = connect(load_target("arm64-emulated"))
    yield dev
    dev.close()


def test_the_emulated_device_is_aarch64_without_torch(emulated):
    info = emulated.info()
    assert info["machine"] == "aarch64" and set(info["runtimes"]) == {"litert", "onnxruntime"}
    argv, site = arm64.agent_command()
    r = subprocess.run([*argv, "-c", f"import sys; sys.path.insert(0, {site!r}); import torch"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr


def test_the_emulated_device_computes_int8_bit_for_bit_and_fp32_within_1e5(emulated, artifacts):
    paths, x = artifacts
    for kind in ("int8", "tflite", "onnx"):
        inputs = _raw_inputs(paths[kind], x)
        arm, x86 = emulated.run(paths[kind], inputs), _local_raw(paths[kind], inputs)
        if kind == "int8":
            assert np.array_equal(arm, x86)
        else:
            assert np.abs(arm - x86).max() <= 1e-5, (kind, float(np.abs(arm - x86).max()))


def test_the_emulated_device_refuses_to_measure(artifacts):
    with pytest.raises(ConfigError, match="emulation"):
        edgeprune.measure(artifacts[0]["tflite"], target="arm64-emulated")
    with pytest.raises(ConfigError, match="emulation"):
        edgeprune.profile(TinyNet(), target="arm64-emulated", input_shape=SHAPE)


def test_cortex_a72_computes_like_x86_and_qemus_max_cpu_is_refused(artifacts):
    if not arm64.available():
        pytest.skip("aarch64 runtime not built: run `make arm64-runtime`")
    paths, x = artifacts
    inputs = _raw_inputs(paths["int8"], x)
    with connect(load_target("arm64-emulated-cortex-a72")) as dev:
        assert np.array_equal(dev.run(paths["int8"], inputs), _local_raw(paths["int8"], inputs))
    with pytest.raises(ConfigError, match="'max' CPU model computes int8"):
        arm64.agent_command("max")
