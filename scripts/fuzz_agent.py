"""Throw malformed, oversized, truncated, slow, unauthenticated and path-traversing requests at a
real device agent, interleaved with concurrent valid ones; the agent must never die, and every
valid request must get the correct answer.

Starts `edgeprune agent --listen 127.0.0.1:0 --token fuzz` (a small body cap and a short socket
timeout, so oversized and slow requests are cheap to send), runs --requests bad requests
(seeded) from one thread while --valid-threads threads keep sending valid `run` and `info`
requests whose answers are checked against this machine's runtime. Prints a table and writes
bench/results/agent_robustness.json: requests by kind, status codes returned, valid answers
right and wrong, whether the agent died, its peak memory (VmHWM).

    .venv/bin/python scripts/fuzz_agent.py [--requests 1200] [--seed 0]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "fuzz"
CAP_MB = 2
SOCKET_TIMEOUT_S = 1.5
KINDS = ("malformed_json", "wrong_fields", "bad_array", "non_model_bytes", "oversized", "truncated",
         "unauthenticated", "path_traversal", "slow")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--valid-threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "agent_robustness.json"))
    a = ap.parse_args()
    from edgeprune.cli._quiet import quiet_output

    with quiet_output():
        return _fuzz(a)


class _Agent:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeprune.cli", "agent", "--listen", "127.0.0.1:0", "--token", TOKEN,
             "--max-body-mb", str(CAP_MB), "--socket-timeout-s", str(SOCKET_TIMEOUT_S),
             "--op-timeout-s", "60"], stderr=subprocess.PIPE, text=True)
        self.port = int(re.search(r"127\.0\.0\.1:(\d+)", self.proc.stderr.readline()).group(1))
        self.stderr_tail: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()  # a full pipe would block the agent
        self.peak_kb = {"server": 0, "executor and operation children": 0}
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.stderr_tail = [*self.stderr_tail[-20:], line.rstrip()]

    def _watch(self) -> None:
        """Peak resident memory (VmHWM) of the server process and, separately, the largest of
        its descendants (the executor and the short-lived child of each operation, sampled
        every 0.1 s)."""
        while not self._stop.is_set() and self.proc.poll() is None:
            for key, pids in (("server", [self.proc.pid]),
                              ("executor and operation children", _descendants(self.proc.pid))):
                for pid in pids:
                    self.peak_kb[key] = max(self.peak_kb[key], _hwm_kb(pid))
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    try:
        kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [d for k in kids for d in _descendants(k)]


def _post(port: int, op: str, body: bytes, headers: dict | None = None, timeout: float = 120) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        h.update(headers or {})
        c.request("POST", f"/v1/{op}", body=body, headers={k: v for k, v in h.items() if v is not None})
        r = c.getresponse()
        data = r.read()
        json.loads(data)  # every answer, even an error, is JSON
        return r.status
    finally:
        c.close()


def _raw(port: int, payload: bytes, *, close_write: bool = True, chunks: int = 1, delay: float = 0.0) -> int:
    """Send ``payload`` on a raw socket (optionally in slow chunks); the status the agent
    answers with, or 0 when it (rightly) closes the connection without an answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        step = max(1, len(payload) // chunks)
        try:
            for i in range(0, len(payload), step):
                s.sendall(payload[i:i + step])
                if delay:
                    time.sleep(delay)
            if close_write:
                s.shutdown(socket.SHUT_WR)
            head = s.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            return 0
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return int(m.group(1)) if m else 0


def _onnx_external(location: str) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros(4, np.float32), "W")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("length", "16")):
        e = w.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("Add", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, 1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _bad_request(kind: str, rng: random.Random, port: int, model: bytes) -> int:
    b64 = base64.b64encode
    if kind == "malformed_json":
        return _post(port, "run", bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))))
    if kind == "wrong_fields":
        req = rng.choice([
            {"protocol": 1, "op": "run", "artifact": 5, "format": "tflite", "inputs": []},
            {"protocol": 1, "op": "measure", "format": "tflite", "artifact": b64(model).decode(),
             "measure": {"warmup": -1, "runs": 10**9, "passes": 0}},
            {"protocol": 1, "op": "measure_many", "format": "tflite", "artifacts": "x" * rng.randint(1, 50)},
            {"protocol": rng.choice([0, 2, "1", None]), "op": "info"},
            {"protocol": 1, "op": "run", rng.choice(["__class__", "cmd", "exec"]): "import os"},
            {"protocol": 1, "op": "run", "format": "pt", "artifact": "", "inputs": {}},
            [1, 2, 3], "just a string", None,
            {"protocol": 1, "op": "measure", "format": "tflite", "artifact": "not base64!!"},
            {"protocol": 1, "op": "run", "format": "tflite", "artifact": b64(model).decode(), "threads": 10**6,
             "inputs": {"dtype": "<f4", "shape": [1, 32, 32, 3], "data": ""}},
        ])
        op = req.get("op", "run") if isinstance(req, dict) and isinstance(req.get("op"), str) else "run"
        return _post(port, op, json.dumps(req).encode())
    if kind == "bad_array":
        arr = rng.choice([{"dtype": "|O", "shape": [1], "data": "AAAA"},
                          {"dtype": "<f4", "shape": [-1, 3], "data": ""},
                          {"dtype": "<f4", "shape": [1, 32, 32, 3], "data": b64(b"\x00" * 7).decode()},
                          {"dtype": "not-a-dtype", "shape": [1], "data": ""},
                          {"dtype": "<f4", "shape": [2**31], "data": ""},
                          {"dtype": "<f4", "shape": [1, 3, 32, 32],
                           "data": b64(b"\x00" * (4 * 3 * 32 * 32)).decode()}])  # NCHW into NHWC
        return _post(port, "run", json.dumps({"protocol": 1, "op": "run", "format": "tflite",
                                              "artifact": b64(model).decode(), "inputs": arr}).encode())
    if kind == "non_model_bytes":
        junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(8, 4096)))
        if rng.random() < 0.5:  # pass the identifier check, then garbage for the runtime
            junk = junk[:4] + b"TFL3" + junk[8:]
        elif rng.random() < 0.5:  # a real model, cut or with bytes flipped
            junk = bytearray(model[: rng.randint(8, len(model))])
            for _ in range(rng.randint(1, 20)):
                junk[rng.randrange(len(junk))] = rng.getrandbits(8)
            junk = bytes(junk)
        fmt = rng.choice(["tflite", "onnx"])
        return _post(port, "run", json.dumps({"protocol": 1, "op": "run", "format": fmt,
                                              "artifact": b64(junk).decode(),
                                              "inputs": {"dtype": "<f4", "shape": [1, 32, 32, 3],
                                                         "data": b64(b"\x00" * 12288).decode()}}).encode())
    if kind == "oversized":
        if rng.random() < 0.5:  # claims far more than the cap, sends a little
            return _raw(port, f"POST /v1/run HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                              f"Content-Length: {rng.randint(CAP_MB * 2**20 + 1, 2**40)}\r\n\r\n{{".encode())
        return _post(port, "run", b"{" + b" " * (CAP_MB * 2**20 + rng.randint(1, 1000)) + b"}")
    if kind == "truncated":
        n = rng.randint(10, 5000)
        body = json.dumps({"protocol": 1, "op": "info"}).encode()[: rng.randint(0, 10)]
        return _raw(port, f"POST /v1/info HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                          f"Content-Length: {n}\r\n\r\n".encode() + body)
    if kind == "unauthenticated":
        token = rng.choice([None, "", "wrong", TOKEN + "x", "Bearer", TOKEN.upper()])
        auth = None if token is None else f"Bearer {token}" if rng.random() < 0.7 else token
        return _post(port, rng.choice(["info", "run", "measure"]), b'{"protocol": 1}',
                     headers={"Authorization": auth})
    if kind == "path_traversal":
        choice = rng.random()
        if choice < 0.5:
            loc = rng.choice(["../../../../etc/passwd", "/etc/passwd", "data.bin", "./model.onnx",
                              "..\\..\\windows\\win.ini", "a/../../b"])
            return _post(port, "run", json.dumps({"protocol": 1, "op": "run", "format": "onnx",
                                                  "artifact": b64(_onnx_external(loc)).decode(),
                                                  "inputs": {"dtype": "<f4", "shape": [1, 4, 1, 1],
                                                             "data": b64(b"\x00" * 16).decode()}}).encode())
        path = rng.choice(["/v1/../../etc/passwd", "/../v1/info", "/v1/run/../../x", "/etc/passwd",
                           "/v1/info?file=../../x"])
        return _raw(port, f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                          "Content-Length: 2\r\n\r\n{}".encode())
    if kind == "slow":  # a request that dribbles in slower than the socket timeout
        req = f"POST /v1/info HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 30\r\n\r\n"
        return _raw(port, req.encode() + b'{"protocol": 1,', close_write=False, chunks=3,
                    delay=SOCKET_TIMEOUT_S * 0.9)
    raise ValueError(kind)


def _fuzz(a) -> int:
    import torch

    from edgeprune import convert
    from edgeprune._io import write_json
    from edgeprune.profiling import host_identity
    from edgeprune.runtimes import open_session

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))
    with tempfile.TemporaryDirectory() as d:
        path = convert.to_tflite(net.eval(), Path(d) / "m.tflite", torch.zeros(1, 3, 32, 32))
        model = path.read_bytes()
        x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
        sess = open_session(path, threads=1)
        want = sess.run_batched(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    agent = _Agent()
    valid = Counter()
    stop = threading.Event()

    def valid_loop(i: int) -> None:
        body = json.dumps({"protocol": 1, "op": "run", "format": "tflite", "artifact":
                           base64.b64encode(model).decode(), "inputs": {
                               "dtype": "<f4", "shape": list(x.shape),
                               "data": base64.b64encode(x.tobytes()).decode()}}).encode()
        while not stop.is_set():
            try:
                if i % 2 and valid["sent"] % 3 == 0:
                    ok = _post(agent.port, "info", b'{"protocol": 1}') == 200
                else:
                    c = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=120)
                    c.request("POST", "/v1/run", body=body, headers={"Authorization": f"Bearer {TOKEN}"})
                    r = c.getresponse()
                    resp = json.loads(r.read())
                    c.close()
                    y = np.frombuffer(base64.b64decode(resp["outputs"]["data"]),
                                      dtype=resp["outputs"]["dtype"]).reshape(resp["outputs"]["shape"])
                    ok = r.status == 200 and np.array_equal(y, want)
            except (OSError, ValueError, KeyError, http.client.HTTPException):
                ok = False
            valid["sent"] += 1
            valid["right" if ok else "wrong"] += 1

    threads = [threading.Thread(target=valid_loop, args=(i,), daemon=True) for i in range(a.valid_threads)]
    for t in threads:
        t.start()
    rng = random.Random(a.seed)
    statuses: dict[str, Counter] = defaultdict(Counter)
    weights = {"slow": 0.1}  # each slow request takes ~4 s
    t0 = time.perf_counter()
    for n in range(a.requests):
        if n and n % 200 == 0:
            print(f"{n} bad requests sent, {time.perf_counter() - t0:.0f} s", flush=True)
        kind = rng.choices(KINDS, weights=[weights.get(k, 1.0) for k in KINDS])[0]
        try:
            status = _bad_request(kind, rng, agent.port, model)
        except (OSError, http.client.HTTPException) as e:
            status = f"connection error: {type(e).__name__}"
        statuses[kind][str(status)] += 1
        if agent.proc.poll() is not None:
            break
    stop.set()
    for t in threads:
        t.join(300)
    alive = agent.proc.poll() is None
    after = _post(agent.port, "info", b'{"protocol": 1}') if alive else None
    agent.stop()
    sent = sum(sum(c.values()) for c in statuses.values())
    good = [s for c in statuses.values() for s in c if s.isdigit() and 400 <= int(s) < 600]
    result = {
        "command": "scripts/fuzz_agent.py " + " ".join(sys.argv[1:]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": host_identity(), "seed": a.seed, "seconds": round(time.perf_counter() - t0, 1),
        "agent": {"body_cap_mb": CAP_MB, "socket_timeout_s": SOCKET_TIMEOUT_S, "token": True},
        "bad_requests": sent,
        "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(statuses.items())},
        "valid_requests": {"sent": valid["sent"], "right": valid["right"], "wrong": valid["wrong"]},
        "agent_died": not alive, "info_after": after,
        "peak_memory_mb": {k: round(v / 1024, 1) for k, v in agent.peak_kb.items()},
        "status_codes_seen": sorted(set(good)),
    }
    print(f"{'kind':18} {'sent':>5}  status codes")
    for k, c in sorted(statuses.items()):
        print(f"{k:18} {sum(c.values()):5d}  " + ", ".join(f"{s}: {n}" for s, n in sorted(c.items())))
    print(f"valid requests: {valid['right']} right, {valid['wrong']} wrong of {valid['sent']}; agent "
          f"{'died' if not alive else 'alive'} (info after: {after}); peak memory (MB) "
          + ", ".join(f"{k} {v}" for k, v in result["peak_memory_mb"].items()))
    write_json(a.out, result)
    print(f"wrote {a.out}")
    return 0 if alive and valid["wrong"] == 0 and after == 200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
