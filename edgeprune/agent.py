"""The edgeprune device agent: runs and times artifacts on the device it runs on.

It needs Python >= 3.9, numpy and a runtime (ai-edge-litert and/or onnxruntime); it imports
nothing else of edgeprune, and no torch, so it runs on a Raspberry Pi or under emulation from
this one file. Start it:

    edgeprune agent --listen 127.0.0.1:7420             # HTTP, loopback (the default)
    edgeprune agent --listen 0.0.0.0:7420 --token T     # any other address needs a token
    edgeprune agent --stdio                             # newline-delimited JSON on stdin/stdout
    python3 agent.py --stdio                            # the same file, edgeprune not installed

The workstation streams this file's source to a device's ``python3`` over ssh (no install on
the device) and talks to it over stdio; see :mod:`edgeprune.runtimes.device`.

Protocol (version :data:`PROTOCOL`): a request is a JSON object ``{"protocol": 1, "op": ...,
...}``; a response is ``{"protocol": 1, "ok": true, ...}`` or ``{"protocol": 1, "ok": false,
"error": {"type": ..., "message": ...}}`` (HTTP: a 4xx/5xx status with that body). Binary
data (artifacts, arrays) travel as base64 strings; an array is ``{"dtype", "shape",
"data"}`` with its exact dtype. Operations:

- ``info``: protocol, machine, CPU model, id and instruction sets (:func:`cpu_identity`),
  cores, runtimes and their versions, threads;
- ``measure``: one artifact, timed by the measurement protocol (``passes`` rounds of
  ``warmup`` untimed then ``runs`` timed invocations, each pass a fresh session); every
  pass's statistics and which pass was fastest;
- ``measure_many``: several artifacts timed in interleaved passes (pass 1 of each, then pass
  2 of each, ...), so drift on the device hits them alike;
- ``run``: artifact + input batch -> raw outputs (exact dtypes; no layout or quantisation
  change: the caller feeds what the artifact takes).

Security: loopback by default; any other address needs ``--token`` (sent as ``Authorization:
Bearer``, compared in constant time); a body size cap; a socket timeout per connection (a slow
or half-sent request is dropped, others go on); one operation at a time (latency needs the
CPU alone); each operation runs in a forked child with a time limit, so a runtime that
crashes on a malformed artifact takes down the child, not the agent; artifacts are written to
a private temporary directory and deleted; an ONNX artifact that refers to external data is
refused. Nothing a request sends is executed as code.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import http.server
import ipaddress
import json
import multiprocessing
import os
import platform
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from typing import Any

PROTOCOL = 1
DEFAULT_PORT = 7420
MAX_BODY_BYTES = 256 * 1024 * 1024
SOCKET_TIMEOUT_S = 20.0  # a connection that sends nothing for this long is dropped
OP_TIMEOUT_S = 600.0  # an operation that runs longer is killed
FORMATS = ("tflite", "onnx")
LIMITS = {"warmup": (0, 10_000), "runs": (1, 100_000), "passes": (1, 100), "threads": (1, 256)}
MAX_ARTIFACTS = 512


class AgentError(Exception):
    """A request the agent refuses: ``status`` is the HTTP status, ``kind`` the error type."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


# ---- encoding -----------------------------------------------------------------------------

def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise AgentError(400, "bad_request", f"{what} must be a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as e:
        raise AgentError(400, "bad_request", f"{what} is not valid base64: {e}") from None


def encode_array(a) -> dict:
    import numpy as np

    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": b64encode(a.tobytes())}


def decode_array(d: Any, what: str):
    import numpy as np

    if not isinstance(d, dict) or set(d) != {"dtype", "shape", "data"}:
        raise AgentError(400, "bad_request", f"{what} must be an object with dtype, shape, data")
    try:
        dtype = np.dtype(d["dtype"])
    except (TypeError, ValueError):
        raise AgentError(400, "bad_request", f"{what}: unknown dtype {d['dtype']!r}") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise AgentError(400, "bad_request", f"{what}: dtype {dtype} is not a numeric dtype")
    shape = d["shape"]
    if (not isinstance(shape, list) or not shape or len(shape) > 8
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s < 2**31 for s in shape)):
        raise AgentError(400, "bad_request", f"{what}: shape {shape!r} must be 1-8 positive ints")
    raw = b64decode(d["data"], f"{what}.data")
    n = 1
    for s in shape:
        n *= s
    if n * dtype.itemsize != len(raw):
        raise AgentError(400, "bad_request", f"{what}: {len(raw)} bytes do not hold shape {shape} "
                                             f"of {dtype}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


# ---- the device ---------------------------------------------------------------------------

# Instruction-set extensions the runtimes' kernels dispatch on (XNNPACK, MLAS): two CPUs that
# share a model name can differ here, and latency with them (this project's two "AMD EPYC"
# hosts, one with AVX-512 VNNI and one without, ran the full-int8 ResNet-20 at 0.23 and 1.14 ms).
KERNEL_ISA = frozenset({
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl",
    "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "avx512vbmi", "amx_tile", "amx_int8",
    "amx_bf16", "avx_vnni_int8",  # x86 (/proc/cpuinfo "flags")
    "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "fphp", "sve", "sve2", "sme",  # arm ("Features")
})


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def _field(text: str, key: str) -> str | None:
    for line in text.splitlines():
        if ":" in line and line.split(":")[0].strip() == key:
            return line.split(":", 1)[1].strip()
    return None


def cpu_identity(cpuinfo: str | None = None) -> dict:
    """This CPU (or the one a /proc/cpuinfo text ``cpuinfo`` describes) as latency depends on
    it: ``cpu`` (the model name), ``cpu_id`` (x86 vendor, family, model and stepping; arm
    implementer, part and variant: what a hypervisor's generic model name hides) and ``isa``
    (the :data:`KERNEL_ISA` extensions it has, sorted). Unknown parts are ``"unknown"`` /
    ``[]`` (macOS has no /proc/cpuinfo: only the brand string tells its CPUs apart)."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    x86 = [_field(text, k) for k in ("vendor_id", "cpu family", "model", "stepping")]
    arm = [_field(text, k) for k in ("CPU implementer", "CPU part", "CPU variant")]
    if all(x86):
        cpu_id = "{} family {} model {} stepping {}".format(*x86)
    elif all(arm):
        cpu_id = "implementer {} part {} variant {}".format(*arm)
    else:
        cpu_id = "unknown"
    flags = (_field(text, "flags") or _field(text, "Features") or "").split()
    return {"cpu": _cpu_model(text), "cpu_id": cpu_id, "isa": sorted(KERNEL_ISA.intersection(flags))}


def _cpu_model(text: str) -> str:
    for key in ("model name", "Model", "Hardware", "cpu model"):
        value = _field(text, key)
        if value:
            return value
    if sys.platform == "darwin":
        import subprocess

        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip() or platform.processor()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def info() -> dict:
    runtimes = {}
    for name, dist in (("litert", "ai-edge-litert"), ("onnxruntime", "onnxruntime")):
        v = _version(dist)
        if v is not None:
            runtimes[name] = v
    return {"protocol": PROTOCOL, "machine": platform.machine(), **cpu_identity(),
            "cores": os.cpu_count(), "system": platform.system(), "hostname": platform.node(),
            "python": platform.python_version(), "numpy": _version("numpy"), "runtimes": runtimes,
            "threads": {"default": 1, "max": LIMITS["threads"][1]}}


# ---- artifacts ----------------------------------------------------------------------------

def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of a protobuf message; value is bytes for
    length-delimited fields, an int otherwise."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = None, i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated field")
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = None, i + 4
        else:
            raise ValueError(f"wire type {wire}")
        yield field, wire, value


# ONNX messages that hold tensors or graphs, by field number (onnx.proto3)
_ONNX_WALK = {
    "model": {7: "graph", 25: "function"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}


def _onnx_external_data(buf: bytes, kind: str = "model", depth: int = 0) -> bool:
    """Whether an ONNX model refers to external data anywhere (initializers, attribute
    tensors, subgraphs, functions)."""
    if depth > 64:
        raise ValueError("nesting too deep")
    for field, wire, value in _fields(buf):
        if kind == "tensor":
            if (field == 13 and wire == 2) or (field == 14 and wire == 0 and value == 1):
                return True
            continue
        sub = _ONNX_WALK.get(kind, {}).get(field)
        if sub is not None and wire == 2 and _onnx_external_data(value, sub, depth + 1):
            return True
    return False


class _Artifact:
    """An artifact written to a private directory, loaded on its runtime."""

    def __init__(self, data: bytes, fmt: str, workdir: str, index: int = 0) -> None:
        if fmt not in FORMATS:
            raise AgentError(400, "bad_request", f"format {fmt!r} is not one of {list(FORMATS)}")
        if fmt == "onnx":
            try:
                external = _onnx_external_data(data)
            except ValueError as e:
                raise AgentError(422, "bad_artifact", f"not an ONNX model ({e})") from None
            if external:
                raise AgentError(422, "bad_artifact", "the ONNX model refers to external data files; "
                                 "the agent runs self-contained models only (save with all tensors "
                                 "inside the .onnx file)")
        elif len(data) < 8 or data[4:8] != b"TFL3":
            raise AgentError(422, "bad_artifact", "not a TFLite flatbuffer (no TFL3 identifier)")
        self.fmt = fmt
        self.path = os.path.join(workdir, f"artifact{index}.{fmt}")
        with open(self.path, "wb") as f:
            f.write(data)

    def session(self, threads: int, delegate: str):
        return _LiteRT(self.path, threads, delegate) if self.fmt == "tflite" else _Onnx(self.path, threads)


class _LiteRT:
    def __init__(self, path: str, threads: int, delegate: str) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError:
            raise AgentError(422, "missing_runtime", "ai-edge-litert is not installed on this device; "
                             "pip install ai-edge-litert") from None
        resolver = {"xnnpack": OpResolverType.AUTO,
                    "none": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}.get(delegate)
        if resolver is None:
            raise AgentError(400, "bad_request", f"delegate {delegate!r} is not 'xnnpack' or 'none'")
        try:
            self.interp = Interpreter(model_path=path, num_threads=threads,
                                      experimental_op_resolver_type=resolver)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise AgentError(422, "bad_artifact", f"LiteRT cannot load the artifact: {e}") from None
        ins, outs = self.interp.get_input_details(), self.interp.get_output_details()
        if len(ins) != 1 or len(outs) != 1:
            raise AgentError(422, "bad_artifact", f"the artifact has {len(ins)} inputs / {len(outs)} "
                             "outputs; the agent runs single-input single-output models")
        self.inp, self.out = ins[0], outs[0]
        self.runtime = "litert"
        self.version = _version("ai-edge-litert")
        sig = [int(s) for s in self.inp.get("shape_signature", self.inp["shape"])]
        self.shape = [int(s) for s in self.inp["shape"]]
        self.dynamic = bool(sig) and sig[0] == -1
        self.dtype = self.inp["dtype"]

    def timing_input(self, seed: int = 0):
        import numpy as np

        x = np.random.default_rng(seed).standard_normal([max(1, s) for s in self.shape])
        if np.dtype(self.dtype) == np.float32:
            return x.astype(np.float32)
        scale, zp = self.inp["quantization"]
        info_ = np.iinfo(self.dtype)
        return np.clip(np.round(x / (scale or 1.0)) + zp, info_.min, info_.max).astype(self.dtype)

    def set_input(self, x) -> None:
        self.interp.set_tensor(self.inp["index"], x)

    def invoke(self) -> None:
        self.interp.invoke()

    def run(self, x):
        import numpy as np

        step = _plan(x, self.shape, np.dtype(self.dtype), self.dynamic)
        if self.dynamic and step != self.shape[0]:
            self.interp.resize_tensor_input(self.inp["index"], [step, *x.shape[1:]])
            self.interp.allocate_tensors()
        ys = []
        for i in range(0, len(x), step):
            self.interp.set_tensor(self.inp["index"], x[i:i + step])
            self.interp.invoke()
            ys.append(np.array(self.interp.get_tensor(self.out["index"])))
        return np.concatenate(ys)


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16",
              "tensor(int32)": "int32", "tensor(int64)": "int64"}


class _Onnx:
    def __init__(self, path: str, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise AgentError(422, "missing_runtime", "onnxruntime is not installed on this device; "
                             "pip install onnxruntime") from None
        try:
            self.sess = ort.InferenceSession(path, onnx_session_options(ort, threads),
                                             providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise AgentError(422, "bad_artifact", f"ONNX Runtime cannot load the artifact: {e}") from None
        ins, outs = self.sess.get_inputs(), self.sess.get_outputs()
        if len(ins) != 1 or len(outs) != 1:
            raise AgentError(422, "bad_artifact", f"the artifact has {len(ins)} inputs / {len(outs)} "
                             "outputs; the agent runs single-input single-output models")
        if ins[0].type not in _ORT_TYPES:
            raise AgentError(422, "bad_artifact", f"input type {ins[0].type} is not handled")
        self.in_name, self.out_name = ins[0].name, outs[0].name
        self.shape = [d if isinstance(d, int) else -1 for d in ins[0].shape]
        self.dynamic = bool(self.shape) and self.shape[0] == -1
        self.dtype = _ORT_TYPES[ins[0].type]
        self.runtime = "onnxruntime"
        self.version = ort.__version__
        self._x = None

    def timing_input(self, seed: int = 0):
        import numpy as np

        shape = [max(1, s) for s in self.shape]
        return np.random.default_rng(seed).standard_normal(shape).astype(self.dtype)

    def set_input(self, x) -> None:
        self._x = x

    def invoke(self) -> None:
        self.sess.run([self.out_name], {self.in_name: self._x})

    def run(self, x):
        import numpy as np

        step = _plan(x, self.shape, np.dtype(self.dtype), self.dynamic)
        return np.concatenate([self.sess.run([self.out_name], {self.in_name: x[i:i + step]})[0]
                               for i in range(0, len(x), step)])


def _plan(x, shape, dtype, dynamic: bool) -> int:
    """Samples per invocation: the whole batch (dynamic or matching batch), or one at a time."""
    if x.dtype != dtype or list(x.shape[1:]) != [int(s) for s in shape[1:]]:
        raise AgentError(400, "bad_request", f"inputs have shape {list(x.shape)} dtype {x.dtype}; the "
                         f"artifact takes (N, {', '.join(str(s) for s in shape[1:])}) {dtype}")
    if dynamic or shape[0] == len(x):
        return len(x)
    if shape[0] == 1:
        return 1
    raise AgentError(400, "bad_request", f"{len(x)} inputs do not fit the artifact's batch {shape[0]}")


def sample_ms(invoke, warmup: int, runs: int):
    """``warmup`` untimed calls of ``invoke``, then the milliseconds of ``runs`` timed ones (the
    measurement protocol's inner loop, shared with the host's runtimes). A clock that gives no
    usable number raises ValueError."""
    import numpy as np

    for _ in range(warmup):
        invoke()
    samples = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter_ns()
        invoke()
        samples[i] = (time.perf_counter_ns() - t0) / 1e6
    if not np.isfinite(samples).all() or samples.min() <= 0:
        raise ValueError(f"timing produced invalid samples {samples[:5].tolist()}")
    return samples


def onnx_session_options(ort, threads: int):
    """ONNX Runtime options for measuring: ``threads`` intra-op threads, sequential, no
    spinning, quiet (shared with the host's adapter)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def _time_pass(sess, warmup: int, runs: int) -> dict:
    import numpy as np

    sess.set_input(sess.timing_input())
    try:
        samples = sample_ms(sess.invoke, warmup, runs)
    except ValueError as e:
        raise AgentError(500, "bad_timing", str(e)) from None
    p10, p25, p50, p75, p90 = np.percentile(samples, [10, 25, 50, 75, 90])
    return {"median_ms": float(p50), "p10_ms": float(p10), "p90_ms": float(p90),
            "iqr_ms": float(p75 - p25), "runs": runs, "warmup": warmup}


# ---- operations ---------------------------------------------------------------------------

def _int(req: dict, key: str, default: int) -> int:
    v = req.get(key, default)
    lo, hi = LIMITS[key]
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise AgentError(400, "bad_request", f"{key} = {v!r} is invalid; need an integer in [{lo}, {hi}]")
    return v


def _measure_args(req: dict) -> tuple[int, int, int, int, str]:
    proto = req.get("measure", {})
    if not isinstance(proto, dict) or set(proto) - {"warmup", "runs", "passes"}:
        raise AgentError(400, "bad_request", "measure must be an object with warmup, runs, passes")
    delegate = req.get("delegate", "xnnpack")
    if not isinstance(delegate, str):
        raise AgentError(400, "bad_request", "delegate must be a string")
    return (_int(proto, "warmup", 10), _int(proto, "runs", 50), _int(proto, "passes", 3),
            _int(req, "threads", 1), delegate)


def _format(req: dict) -> str:
    fmt = req.get("format")
    if fmt not in FORMATS:
        raise AgentError(400, "bad_request", f"format {fmt!r} is not one of {list(FORMATS)}")
    return fmt


def op_measure_many(req: dict, workdir: str) -> dict:
    datas = req.get("artifacts")
    if not isinstance(datas, list) or not 1 <= len(datas) <= MAX_ARTIFACTS:
        raise AgentError(400, "bad_request", f"artifacts must be a list of 1..{MAX_ARTIFACTS} base64 strings")
    fmt = _format(req)
    warmup, runs, passes, threads, delegate = _measure_args(req)
    arts = [_Artifact(b64decode(d, f"artifacts[{i}]"), fmt, workdir, i) for i, d in enumerate(datas)]
    per: list[list[dict]] = [[] for _ in arts]
    meta = {}
    for _ in range(passes):
        for i, art in enumerate(arts):
            sess = art.session(threads, delegate)
            meta = {"runtime": sess.runtime, "runtime_version": sess.version}
            per[i].append(_time_pass(sess, warmup, runs))
            del sess
    results = []
    for stats in per:
        fastest = min(range(len(stats)), key=lambda k: stats[k]["median_ms"])
        results.append({"passes": stats, "fastest": fastest})
    return {"results": results, "threads": threads, "delegate": delegate, **meta}


def op_measure(req: dict, workdir: str) -> dict:
    if "artifact" not in req:
        raise AgentError(400, "bad_request", "measure needs artifact (base64)")
    out = op_measure_many({**{k: v for k, v in req.items() if k != "artifact"},
                           "artifacts": [req["artifact"]]}, workdir)
    return {**{k: v for k, v in out.items() if k != "results"}, **out["results"][0]}


def op_run(req: dict, workdir: str) -> dict:
    if "artifact" not in req or "inputs" not in req:
        raise AgentError(400, "bad_request", "run needs artifact (base64) and inputs (an array)")
    fmt = _format(req)
    threads = _int(req, "threads", 1)
    x = decode_array(req["inputs"], "inputs")
    sess = _Artifact(b64decode(req["artifact"], "artifact"), fmt, workdir).session(threads, "xnnpack")
    y = sess.run(x)
    return {"outputs": encode_array(y), "runtime": sess.runtime, "runtime_version": sess.version}


OPS = {"measure": op_measure, "measure_many": op_measure_many, "run": op_run}
KNOWN_KEYS = {"protocol", "op", "format", "artifact", "artifacts", "measure", "threads", "delegate",
              "inputs"}


def _op_result(op: str, req: dict) -> dict:
    """Run one operation in a private temp dir; its answer as a plain dict (never raises)."""
    workdir = tempfile.mkdtemp(prefix="edgeprune-agent-")  # mode 0700
    try:
        return {"ok": True, **OPS[op](req, workdir)}
    except AgentError as e:
        return {"ok": False, "status": e.status, "type": e.kind, "message": str(e)}
    except Exception as e:  # a runtime's own exception types: the request failed, not the agent
        return {"ok": False, "status": 500, "type": "runtime_error", "message": f"{type(e).__name__}: {e}"}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _forked(op: str, req: dict, timeout_s: float) -> dict:
    """:func:`_op_result` in a forked child with a time limit: a runtime that crashes or hangs
    on an artifact takes down the child only. Called from a single-threaded process."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(r)
            data = json.dumps(_op_result(op, req)).encode()
            with os.fdopen(w, "wb") as f:
                f.write(data)
        except BaseException:  # noqa: BLE001 - the child must never return into the caller
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks, deadline, timed_out = [], time.monotonic() + timeout_s, False
    with os.fdopen(r, "rb", buffering=0) as f:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([f], [], [], left)[0]:
                timed_out = True
                break
            chunk = f.read(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if timed_out:
        return {"ok": False, "status": 504, "type": "timeout", "message": f"{op} took longer than {timeout_s:g} s"}
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        return {"ok": False, "status": 500, "type": "runtime_crash",
                "message": f"the runtime crashed on this artifact (wait status {status})"}


def _executor(conn, agents_end, timeout_s: float) -> None:
    """The executor's loop: one operation at a time, each in a forked child; it ends when the
    agent's end of the pipe closes (the agent exited)."""
    agents_end.close()  # the fork copied it; holding it would hide the agent's exit
    _preload()
    while True:
        try:
            op, req = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(_forked(op, req, timeout_s))


class Agent:
    """Validates requests and runs operations one at a time (``info`` runs in the agent
    itself). Operations run in an executor process forked when the agent starts, before any
    server thread exists, and it forks one child per operation: forking a multi-threaded
    process can leave the child waiting forever on a lock another thread held."""

    def __init__(self, op_timeout_s: float = OP_TIMEOUT_S) -> None:
        self.op_timeout_s = op_timeout_s
        self.lock = threading.Lock()
        self._fork = hasattr(os, "fork")
        if self._fork:
            self._start_executor()
        else:  # pragma: no cover - Windows: in this process, without the crash guard
            _preload()

    def _start_executor(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self._conn, theirs = ctx.Pipe()
        self._proc = ctx.Process(target=_executor, args=(theirs, self._conn, self.op_timeout_s), daemon=True)
        self._proc.start()
        theirs.close()

    def handle(self, req: Any) -> tuple[int, dict]:
        """(HTTP status, response object) for a decoded request."""
        try:
            return 200, {"protocol": PROTOCOL, "ok": True, **self._dispatch(req)}
        except AgentError as e:
            return e.status, error_body(e.kind, str(e))

    def _dispatch(self, req: Any) -> dict:
        if not isinstance(req, dict):
            raise AgentError(400, "bad_request", "a request must be a JSON object")
        if req.get("protocol") != PROTOCOL:
            raise AgentError(400, "protocol_version",
                             f"this agent speaks protocol {PROTOCOL}; the request says "
                             f"{req.get('protocol')!r}; use edgeprune and agent of matching versions")
        unknown = sorted(set(req) - KNOWN_KEYS)
        if unknown:
            raise AgentError(400, "bad_request", f"unknown field(s) {unknown}")
        op = req.get("op")
        if op == "info":
            return info()
        if op not in OPS:
            raise AgentError(404, "unknown_op", f"unknown op {op!r}; known: info, {', '.join(OPS)}")
        with self.lock:  # latency needs the CPU alone
            result = self._run(op, req)
        if not result.pop("ok"):
            raise AgentError(result["status"], result["type"], result["message"])
        return result

    def _run(self, op: str, req: dict) -> dict:
        if not self._fork:  # pragma: no cover - Windows
            return _op_result(op, req)
        try:
            self._conn.send((op, req))
            return self._conn.recv()
        except (EOFError, OSError):  # the executor died (killed from outside): start another
            self._proc.join(1)
            self._start_executor()
            return {"ok": False, "status": 503, "type": "executor_restarted",
                    "message": "the agent's executor process exited and was restarted; retry"}

    def close(self) -> None:
        if self._fork:
            self._conn.close()
            self._proc.join(5)


def _preload() -> None:
    """Import numpy and the runtimes once, in the executor, so each forked child starts with
    them (under emulation an import takes seconds)."""
    for name in ("numpy", "ai_edge_litert.interpreter", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            pass


def error_body(kind: str, message: str) -> dict:
    return {"protocol": PROTOCOL, "ok": False, "error": {"type": kind, "message": message}}


# ---- transports ---------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = f"edgeprune-agent/{PROTOCOL}"

    def setup(self) -> None:
        self.timeout = self.server.socket_timeout_s  # type: ignore[attr-defined]  # slow: dropped
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        if self.server.verbose:  # type: ignore[attr-defined]
            super().log_message(format, *args)

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client went away

    def _authorised(self) -> bool:
        token = self.server.token  # type: ignore[attr-defined]
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode("utf-8", "replace"), f"Bearer {token}".encode())

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if not self._authorised():
            return self._send(401, error_body("unauthorized", "missing or wrong token"))
        if self.path != "/v1/info":
            return self._send(404, error_body("not_found", f"no {self.path}; POST /v1/<op> or GET /v1/info"))
        self._send(200, {"protocol": PROTOCOL, "ok": True, **info()})

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        if not self._authorised():
            return self._send(401, error_body("unauthorized", "missing or wrong token"))
        if not self.path.startswith("/v1/"):
            return self._send(404, error_body("not_found", f"no {self.path}; POST /v1/<op>"))
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            return self._send(411, error_body("length_required", "send a Content-Length"))
        n = int(length)
        cap = self.server.max_body_bytes  # type: ignore[attr-defined]
        if n > cap:
            return self._send(413, error_body("too_large", f"body of {n} bytes is over the cap of {cap}"))
        try:
            body = self.rfile.read(n)
        except OSError:  # socket.timeout is an OSError
            return self._send(408, error_body("timeout", "the request body did not arrive in time"))
        if len(body) != n:
            return self._send(400, error_body("truncated", f"got {len(body)} of {n} body bytes"))
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            return self._send(400, error_body("bad_json", f"the body is not JSON: {e}"))
        if isinstance(req, dict) and "op" not in req:
            req = {**req, "op": self.path[len("/v1/"):]}
        if isinstance(req, dict) and req.get("op") != self.path[len("/v1/"):]:
            return self._send(400, error_body("bad_request", "the body's op does not match the path"))
        self._send(*self.server.agent.handle(req))  # type: ignore[attr-defined]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if self.verbose:  # type: ignore[attr-defined]
            traceback.print_exc()


def make_server(host: str, port: int, *, token: str | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                op_timeout_s: float = OP_TIMEOUT_S, socket_timeout_s: float = SOCKET_TIMEOUT_S,
                verbose: bool = False) -> _Server:
    """The HTTP agent bound to (host, port) (port 0: any free port), not yet serving. A
    non-loopback host needs ``token``."""
    if not _is_loopback(host) and not token:
        raise AgentError(400, "config", f"--listen {host}:{port} is not a loopback address; give "
                         "--token (clients send it; edgeprune reads it from the target's token_env)")
    server = _Server((host, port), _Handler)
    server.token = token  # type: ignore[attr-defined]
    server.max_body_bytes = max_body_bytes  # type: ignore[attr-defined]
    server.socket_timeout_s = socket_timeout_s  # type: ignore[attr-defined]
    server.agent = Agent(op_timeout_s)  # type: ignore[attr-defined]
    server.verbose = verbose  # type: ignore[attr-defined]
    return server


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_stdio(stdin=None, stdout=None, *, max_body_bytes: int = MAX_BODY_BYTES,
                op_timeout_s: float = OP_TIMEOUT_S) -> None:
    """Answer newline-delimited JSON requests from ``stdin`` on ``stdout`` until EOF."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    agent = Agent(op_timeout_s)
    while True:
        line = stdin.readline(max_body_bytes + 2)
        if not line:
            return
        if len(line) > max_body_bytes and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # discard the rest of the oversized line
                line = stdin.readline(1 << 20)
            status, body = 413, error_body("too_large", f"request over the cap of {max_body_bytes} bytes")
        elif not line.strip():
            continue
        else:
            try:
                status, body = agent.handle(json.loads(line))
            except (ValueError, UnicodeDecodeError) as e:
                status, body = 400, error_body("bad_json", f"the request is not JSON: {e}")
        body["status"] = status
        stdout.write(json.dumps(body).encode() + b"\n")
        stdout.flush()


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edgeprune agent", description=__doc__.split("\n\n")[0])
    how = ap.add_mutually_exclusive_group(required=True)
    how.add_argument("--listen", metavar="HOST:PORT", help=f"serve HTTP (e.g. 127.0.0.1:{DEFAULT_PORT})")
    how.add_argument("--stdio", action="store_true", help="newline-delimited JSON on stdin/stdout")
    ap.add_argument("--token", default=os.environ.get("EDGEPRUNE_AGENT_TOKEN"),
                    help="required for a non-loopback --listen (default: $EDGEPRUNE_AGENT_TOKEN)")
    ap.add_argument("--max-body-mb", type=float, default=MAX_BODY_BYTES / 2**20)
    ap.add_argument("--op-timeout-s", type=float, default=OP_TIMEOUT_S,
                    help="an operation running longer is killed (504)")
    ap.add_argument("--socket-timeout-s", type=float, default=SOCKET_TIMEOUT_S,
                    help="a connection silent this long is dropped (a slow or half-sent request)")
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    a = ap.parse_args(argv)
    cap = int(a.max_body_mb * 2**20)
    signal.signal(signal.SIGTERM, _exit_on_signal)  # shut down cleanly (the executor too)
    if a.stdio:
        serve_stdio(max_body_bytes=cap, op_timeout_s=a.op_timeout_s)
        return 0
    host, _, port = a.listen.rpartition(":")
    if not host or not port.isdigit():
        print(f"edgeprune agent: error: --listen {a.listen!r} is not HOST:PORT", file=sys.stderr)
        return 2
    try:
        server = make_server(host.strip("[]"), int(port), token=a.token, max_body_bytes=cap,
                             op_timeout_s=a.op_timeout_s, socket_timeout_s=a.socket_timeout_s,
                             verbose=a.verbose)
    except (AgentError, OSError) as e:
        print(f"edgeprune agent: error: {e}", file=sys.stderr)
        return 2
    h, p = server.server_address[:2]
    print(f"edgeprune agent (protocol {PROTOCOL}) listening on http://{h}:{p}"
          + (" (token required)" if a.token else ""), file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
