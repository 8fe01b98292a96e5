"""A latency profile measured through the device agent predicts what runs locally.

Starts `edgeprune agent --listen 127.0.0.1:0` on this machine, profiles a zoo model on a
target that reaches it (agent://, host-litert's settings) and on host-litert itself, then in
--rounds rounds (a third before, between and after the two profiles) measures the model locally
and through the agent, side by side (local then agent in each round, each the fastest of the
target's passes). Prints a table and writes
bench/results/agent_profile.json: each profile's prediction against each round's local
measurement, and the agent-vs-local ratio per round. The agent runs on the same CPU here, so
the two must agree; the spread across rounds is this machine's drift.

    .venv/bin/python scripts/bench_agent_profile.py [--model resnet20] [--rounds 6] [--cpu N]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from edgeprune.cli._quiet import quiet_output

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--cpu", type=int, default=None,
                    help="pin this script and the agent (which inherits it) to one CPU: on a VM whose "
                         "vCPUs run at different speeds, unpinned processes land on either")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "agent_profile.json"))
    a = ap.parse_args()
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    with quiet_output():
        return _bench(a)


def _bench(a) -> int:
    import edgeprune
    from edgeprune import convert
    from edgeprune._io import write_json
    from edgeprune.profiling import dense_copy, host_identity
    from edgeprune.targets import load_target

    torch.set_num_threads(1)
    shape = (3, 32, 32)
    model = dense_copy(edgeprune.models.create(a.model)).eval()
    log = tempfile.TemporaryFile("w+")  # the agent's stderr: a pipe nobody reads would fill
    proc = subprocess.Popen([sys.executable, "-m", "edgeprune.cli", "agent", "--listen", "127.0.0.1:0"],
                            stderr=log, text=True)
    try:
        port = _port(log, proc)
        with tempfile.TemporaryDirectory() as d:
            host = load_target("host-litert")
            tp = Path(d) / "loopback-agent.toml"
            tp.write_text(f'name = "loopback-agent"\nruntime = "litert"\nthreads = {host.threads}\n'
                          f'round_to = {host.round_to}\nconnection = "agent://127.0.0.1:{port}"\n'
                          f"[measure]\nwarmup = {host.measure.warmup}\nruns = {host.measure.runs}\n"
                          f"passes = {host.measure.passes}\n")
            path = convert.to_tflite(model, Path(d) / "model.tflite", torch.zeros(1, *shape))
            rounds: list[dict] = []

            def measure_rounds(n: int, when: str) -> None:
                for _ in range(n):
                    local = edgeprune.measure(path, target="host-litert").median_ms
                    remote = edgeprune.measure(path, target=str(tp)).median_ms
                    rounds.append({"when": when, "local_ms": local, "agent_ms": remote})

            k = max(1, a.rounds // 3)  # rounds before, between and after the two profiles
            measure_rounds(k, "before the profiles")
            t0 = time.perf_counter()
            via_agent = edgeprune.profile(model, target=str(tp), input_shape=shape)
            agent_s = time.perf_counter() - t0
            measure_rounds(k, "between the profiles")
            t0 = time.perf_counter()
            local_prof = edgeprune.profile(model, target="host-litert", input_shape=shape)
            local_s = time.perf_counter() - t0
            measure_rounds(max(1, a.rounds - 2 * k), "after the profiles")
    finally:
        proc.terminate()
        proc.wait(10)
    p_agent, p_local = via_agent.predict_ms(model), local_prof.predict_ms(model)
    for r in rounds:
        r["agent_over_local"] = r["agent_ms"] / r["local_ms"]
        r["agent_profile_error"] = p_agent / r["local_ms"] - 1
        r["local_profile_error"] = p_local / r["local_ms"] - 1
    local_min = min(r["local_ms"] for r in rounds)
    local_med = statistics.median(r["local_ms"] for r in rounds)
    summary = {
        "predicted_ms_agent_profile": p_agent, "predicted_ms_local_profile": p_local,
        "local_ms_median_of_rounds": local_med,
        "agent_profile_error_vs_median_local": p_agent / local_med - 1,
        "local_profile_error_vs_median_local": p_local / local_med - 1,
        "agent_profile_over_local_profile": p_agent / p_local,
        # the rounds measured right after each profile was built: the same state of the machine
        "agent_profile_error_vs_rounds_just_after_it": [
            p_agent / r["local_ms"] - 1 for r in rounds if r["when"] == "between the profiles"],
        "local_profile_error_vs_rounds_just_after_it": [
            p_local / r["local_ms"] - 1 for r in rounds if r["when"] == "after the profiles"],
        "local_ms_fastest_round": local_min,
        "agent_profile_error_vs_fastest_local": p_agent / local_min - 1,
        "local_profile_error_vs_fastest_local": p_local / local_min - 1,
        "agent_over_local_median": statistics.median(r["agent_over_local"] for r in rounds),
        "local_ms_spread_across_rounds": max(r["local_ms"] for r in rounds) / local_min - 1,
        "profile_build_s": {"agent": round(agent_s, 1), "local": round(local_s, 1)},
    }
    print(f"{'round':>5} {'local ms':>9} {'agent ms':>9} {'agent/local':>11} {'err(agent prof)':>15} "
          f"{'err(local prof)':>15}")
    for i, r in enumerate(rounds):
        print(f"{i:5d} {r['local_ms']:9.3f} {r['agent_ms']:9.3f} {r['agent_over_local']:11.3f} "
              f"{100 * r['agent_profile_error']:+14.1f}% {100 * r['local_profile_error']:+14.1f}%")
    print(f"predicted: {p_agent:.3f} ms (profile through the agent), {p_local:.3f} ms (local profile); "
          f"median local round {local_med:.3f} ms: {100 * summary['agent_profile_error_vs_median_local']:+.1f}% "
          f"/ {100 * summary['local_profile_error_vs_median_local']:+.1f}%; fastest local round "
          f"{local_min:.3f} ms: {100 * summary['agent_profile_error_vs_fastest_local']:+.1f}% "
          f"/ {100 * summary['local_profile_error_vs_fastest_local']:+.1f}%")
    write_json(a.out, {"command": "scripts/bench_agent_profile.py " + " ".join(sys.argv[1:]),
                       "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "host": host_identity(), "model": a.model, "agent_info": via_agent.host,
                       "pinned_cpu": a.cpu,
                       "summary": summary, "rounds": rounds})
    print(f"wrote {a.out}")
    return 0


def _port(log, proc) -> int:
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        log.seek(0)
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read())
        if m:
            return int(m.group(1))
        time.sleep(0.05)
    raise RuntimeError("the agent did not start")


if __name__ == "__main__":
    raise SystemExit(main())
