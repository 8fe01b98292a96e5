"""Converts single-layer models for a latency profile in a separate process.

Run as ``python -m edgeprune.profiling._convert_worker`` (never imported by the caller's
``__main__``, unlike a multiprocessing pool, so a plain script without a ``__main__`` guard
can profile). Reads one JSON object from stdin: ``{"target": {...}, "jobs": [{"key": [sig,
c_in, c_out], "unit": {...}, "c_in": .., "c_out": .., "path": ..}, ...]}``; converts each job
and prints a line ``edgeprune-converted KEY_AS_JSON`` on stdout when its file is written. Any failure exits
non-zero with the error on stderr.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    import torch

    from edgeprune.graph.layers import LayerUnit
    from edgeprune.profiling.latency import _DONE, _convert_point
    from edgeprune.targets import Target

    torch.set_num_threads(1)
    spec = json.loads(sys.stdin.read())
    target = Target.from_dict(spec["target"])
    for job in spec["jobs"]:
        u = job["unit"]
        unit = LayerUnit(**{k: tuple(v) if isinstance(v, list) else v for k, v in u.items()})
        _convert_point(unit, int(job["c_in"]), int(job["c_out"]), target, job["path"])
        print(_DONE + json.dumps(job["key"]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
