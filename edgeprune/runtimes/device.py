"""Devices reached through the edgeprune agent (:mod:`edgeprune.agent`).

``connect(target)`` opens the target's connection and returns a :class:`Device`:

- ``agent://HOST:PORT``: an ``edgeprune agent --listen`` over HTTP; the token, when the
  target names a ``token_env``, comes from that environment variable;
- ``ssh://[USER@]HOST[:PORT]``: zero-install: ssh runs the device's ``python3``, this machine
  streams the agent's source into it, and they talk over stdin/stdout (the device needs only
  numpy and a runtime wheel; ssh authenticates);
- ``qemu://CPU``: the emulated aarch64 runtime (``make arm64-runtime``), the same agent over
  stdio under ``qemu-aarch64 -cpu CPU``.

:meth:`Device.info` is the agent's description of the device (machine, CPU, runtimes, ...):
every measurement and check through it records it. :meth:`Device.measure_many` times
artifacts in interleaved passes with the target's protocol; :meth:`Device.run` returns raw
outputs; :meth:`Device.run_like_host` feeds and reads an artifact like a host
:class:`~edgeprune.runtimes.base.Session` (float32 NCHW in, float32 out). An unreachable
device is an error within the target's ``timeout_s``; a protocol mismatch is an error that
names both versions.
"""

from __future__ import annotations

import json
import os
import selectors
import shlex
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune import agent
from edgeprune.errors import ConfigError, MissingDependencyError, RuntimeAdapterError
from edgeprune.targets import Target
from edgeprune.types import LatencyStats

REQUEST_TIMEOUT_S = 1800.0  # one request may time many artifacts on a slow device
MAX_REQUEST_BYTES = 64 * 2**20  # artifacts per measure_many request, before base64
# Images per ``run`` request. Each request is one operation under the agent's time limit
# (600 s by default); VGG-Small fp32 under aarch64 emulation runs about 2.4 images/s, so 256
# images in one request ran past it. 32 keeps a request near a minute there.
RUN_BATCH_IMAGES = 32
_FORMAT = {".tflite": "tflite", ".onnx": "onnx"}
# the one-line program the device's python runs: read the agent's source from stdin, run it
_BOOTSTRAP = ("import sys;{path}n=int(sys.stdin.buffer.readline());"
              "src=sys.stdin.buffer.read(n).decode();g={{'__name__':'edgeprune_agent'}};"
              "exec(compile(src,'edgeprune_agent.py','exec'),g);g['serve_stdio']()")


class _Http:
    def __init__(self, host: str, port: int, token: str | None, timeout_s: float, where: str) -> None:
        self.base = f"http://{host}:{port}/v1"
        self.token, self.timeout_s, self.where = token, timeout_s, where

    def request(self, req: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        data = json.dumps(req).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        http = urllib.request.Request(f"{self.base}/{req['op']}", data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(http, timeout=timeout_s) as r:  # noqa: S310 - http(s) only
                body = r.read()
        except urllib.error.HTTPError as e:
            body = e.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RuntimeAdapterError(
                f"cannot reach the agent of {self.where} at {self.base} ({reason}); is `edgeprune agent "
                "--listen HOST:PORT` running there, and is the port reachable?") from None
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise RuntimeAdapterError(f"{self.base} answered with something that is not an edgeprune "
                                      f"agent's JSON ({body[:80]!r})") from None

    def close(self) -> None:
        pass


class _Stdio:
    """The agent as a child process (ssh or QEMU) that reads requests on stdin."""

    def __init__(self, argv: list[str], where: str, *, site_packages: str | None = None,
                 env: dict[str, str] | None = None, remote_shell: bool = False) -> None:
        self.where = where
        path = f"sys.path.insert(0,{site_packages!r});" if site_packages else ""
        boot = _BOOTSTRAP.format(path=path)
        if remote_shell:  # ssh joins the command into one line for the device's shell
            boot = shlex.quote(boot)
        self._err = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen([*argv, "-c", boot], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._err, env=env)
        except OSError as e:
            raise RuntimeAdapterError(f"cannot start {argv[0]!r} for {where}: {e}") from None
        source = Path(agent.__file__).read_bytes()
        self._write(f"{len(source)}\n".encode() + source)
        self._buf = b""

    def _write(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            raise RuntimeAdapterError(f"the agent of {self.where} exited: {self._stderr()}") from None

    def _stderr(self) -> str:
        self._err.seek(0)
        lines = [ln for ln in self._err.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return " | ".join(lines[-4:]) or f"no output (exit {self.proc.poll()})"

    def _readline(self, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        out = self.proc.stdout
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)  # type: ignore[arg-type]
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.close()
                    raise RuntimeAdapterError(f"the agent of {self.where} did not answer within "
                                              f"{timeout_s:g} s; {self._stderr()}")
                chunk = os.read(out.fileno(), 1 << 20)  # type: ignore[union-attr]
                if not chunk:
                    raise RuntimeAdapterError(f"the agent of {self.where} exited: {self._stderr()}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def request(self, req: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        self._write(json.dumps(req).encode() + b"\n")
        line = self._readline(timeout_s)
        try:
            return json.loads(line)
        except (ValueError, UnicodeDecodeError):
            raise RuntimeAdapterError(f"the agent of {self.where} answered with something that is not "
                                      f"JSON ({line[:80]!r}); {self._stderr()}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._err.close()


class Device:
    """A device behind its agent. Use as a context manager (closes the connection)."""

    def __init__(self, transport: _Http | _Stdio, target: Target) -> None:
        self._t, self.target = transport, target
        self._info: dict[str, Any] | None = None

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._t.close()

    def _ask(self, req: dict[str, Any], timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
        resp = self._t.request({"protocol": agent.PROTOCOL, **req}, timeout_s)
        where = f"{self.target.name} ({self.target.connection})"
        if not isinstance(resp, dict) or "protocol" not in resp:
            raise RuntimeAdapterError(f"{where} answered {str(resp)[:80]!r}, not an edgeprune agent reply")
        if resp["protocol"] != agent.PROTOCOL or resp.get("error", {}).get("type") == "protocol_version":
            raise RuntimeAdapterError(
                f"the agent of {where} speaks protocol {resp['protocol']!r}, this edgeprune speaks "
                f"{agent.PROTOCOL}; install the same edgeprune version on both sides (or use ssh://, "
                "which sends this machine's agent)")
        if not resp.get("ok"):
            err = resp.get("error", {})
            raise RuntimeAdapterError(f"the agent of {where} refused {req.get('op')}: "
                                      f"{err.get('type')}: {err.get('message')}")
        return resp

    def info(self) -> dict[str, Any]:
        """The agent's description of the device (asked once, then kept)."""
        if self._info is None:
            resp = self._ask({"op": "info"}, self.target.timeout_s)
            self._info = {k: v for k, v in resp.items() if k not in ("ok", "status")}
        return dict(self._info)

    def runtime_version(self, runtime: str) -> str:
        have = self.info().get("runtimes", {})
        if runtime not in have:
            pkg = {"litert": "ai-edge-litert"}.get(runtime, runtime)
            raise MissingDependencyError(f"{self.target.name}: the device has no {runtime} (its agent "
                                         f"reports {sorted(have) or 'none'}); pip install {pkg} there")
        return str(have[runtime])

    def measure_many(self, paths: list[str | os.PathLike], *, on_pass=None,
                     passes: int | None = None) -> list[LatencyStats]:
        """Time ``paths`` on the device with the target's protocol, threads and delegate, in
        interleaved passes (``passes`` replaces the protocol's number); each reports its
        fastest pass (as local measurement does)."""
        t = self.target
        fmt = _format_of(paths)
        info = self.info()
        self.runtime_version(t.runtime)
        out: list[LatencyStats] = []
        for chunk in _chunks([Path(p) for p in paths]):
            resp = self._ask({"op": "measure_many", "format": fmt, "threads": t.threads,
                              "delegate": t.delegate,
                              "measure": {"warmup": t.measure.warmup, "runs": t.measure.runs,
                                          "passes": passes or t.measure.passes},
                              "artifacts": [agent.b64encode(p.read_bytes()) for p in chunk]})
            for r in resp["results"]:
                best = r["passes"][r["fastest"]]
                out.append(LatencyStats(
                    best["median_ms"], best["p10_ms"], best["p90_ms"], best["iqr_ms"], best["runs"],
                    best["warmup"], resp["runtime"], resp["runtime_version"], resp["threads"],
                    passes=len(r["passes"]), pass_medians_ms=tuple(p["median_ms"] for p in r["passes"]),
                    device=info))
            if on_pass is not None:
                on_pass(len(out), len(paths))
        return out

    def run(self, path: str | os.PathLike, inputs: np.ndarray, *, threads: int = 1,
            batch: int = RUN_BATCH_IMAGES) -> np.ndarray:
        """Raw outputs of ``path`` on ``inputs`` (exactly what the artifact takes: NHWC for
        TFLite, its own dtype), in the artifact's output dtype. The inputs go ``batch`` images
        per request, so that no request runs past the agent's time limit on a slow device."""
        if batch < 1 or len(inputs) == 0:
            raise ConfigError(f"batch={batch}, {len(inputs)} inputs: a run needs at least one "
                              "image and a batch of at least 1")
        p = Path(path)
        fmt, artifact = _format_of([p]), agent.b64encode(p.read_bytes())
        ys = []
        for i in range(0, len(inputs), batch):
            chunk = np.ascontiguousarray(inputs[i:i + batch])
            resp = self._ask({"op": "run", "format": fmt, "threads": threads, "artifact": artifact,
                              "inputs": agent.encode_array(chunk)})
            try:
                y = agent.decode_array(resp["outputs"], "outputs")
            except agent.AgentError as e:
                raise RuntimeAdapterError(f"{self.target.name}: the agent's outputs are malformed: {e}") from None
            if len(y) != len(chunk):
                raise RuntimeAdapterError(f"{self.target.name}: {len(y)} outputs for {len(chunk)} inputs")
            ys.append(y)
        return np.concatenate(ys)

    def run_like_host(self, path: str | os.PathLike, x: np.ndarray) -> tuple[np.ndarray, str]:
        """Run ``path`` on the device the way a host session runs it: float32 NCHW in, float32
        out (int8 I/O quantised and dequantised with the artifact's own parameters, TFLite's
        NHWC changed at the boundary). Returns (outputs, the device's runtime version)."""
        from edgeprune.runtimes import open_session

        sess = open_session(path, threads=1)  # the host session reads layout and quantisation
        raw = self.run(path, _artifact_input(sess, x))
        return _artifact_output(sess, raw), self.runtime_version(sess.runtime)


def connect(target: Target) -> Device:
    """Open ``target``'s connection to its device agent (see the module docstring)."""
    where = f"target {target.name!r}"
    scheme, _, rest = target.connection.partition("://")
    if scheme == "agent":
        host, _, port = rest.rpartition(":")
        token = None
        if target.token_env:
            token = os.environ.get(target.token_env)
            if not token:
                raise ConfigError(f"{where}: its agent needs the token in ${target.token_env}, which is not "
                                  f"set; export {target.token_env}=... (the agent's --token)")
        return Device(_Http(host.strip("[]"), int(port), token, target.timeout_s, where), target)
    if scheme == "ssh":
        hostpart, _, port = rest.partition(":") if rest.count(":") == 1 else (rest, "", "")
        argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(target.timeout_s)}",
                *(["-p", port] if port else []), hostpart, target.remote_python, "-u"]
        return Device(_Stdio(argv, where, remote_shell=True), target)
    if scheme == "qemu":
        from edgeprune.runtimes import arm64

        argv, site = arm64.agent_command(rest)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
        return Device(_Stdio(argv, where, site_packages=site, env=env), target)
    raise ConfigError(f"{where}: connection {target.connection!r} is not a device (local targets run "
                      "in this process)")


def _format_of(paths) -> str:
    fmts = {_FORMAT.get(Path(p).suffix) for p in paths}
    if None in fmts or len(fmts) != 1:
        raise ConfigError(f"artifacts {[str(p) for p in paths][:3]} must all be .tflite or all .onnx")
    return fmts.pop()  # type: ignore[return-value]


def _chunks(paths: list[Path]) -> list[list[Path]]:
    out: list[list[Path]] = [[]]
    size = 0
    for p in paths:
        n = p.stat().st_size
        if out[-1] and (size + n > MAX_REQUEST_BYTES or len(out[-1]) >= agent.MAX_ARTIFACTS):
            out.append([])
            size = 0
        out[-1].append(p)
        size += n
    return out


def _artifact_input(sess, x: np.ndarray) -> np.ndarray:
    if sess.runtime != "litert":
        return np.ascontiguousarray(x, dtype=np.float32)
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=np.float32)
    if sess.input_dtype != np.float32:
        scale, zp = sess.input_quantization
        info = np.iinfo(sess.input_dtype)
        nhwc = np.clip(np.round(nhwc / scale) + zp, info.min, info.max).astype(sess.input_dtype)
    return nhwc


def _artifact_output(sess, y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if sess.runtime == "litert" and sess.output_dtype != np.float32:
        scale, zp = sess.output_quantization
        y = (y.astype(np.float32) - zp) * scale
    y = y.reshape(len(y), -1) if y.ndim == 3 and y.shape[1] == 1 else y
    if y.ndim == 4 and sess.runtime == "litert":
        y = y.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(y, dtype=np.float32)
