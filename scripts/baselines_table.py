"""Print the Markdown table of the committed baselines (docs/baselines.md) from their
metrics.json files, so the doc's numbers come from the files, not from memory.

    .venv/bin/python scripts/baselines_table.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    print("| baseline | val data | val top-1 | train images | epochs | lr | trained on | train time (s) | command |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for p in sorted((ROOT / "bench" / "baselines").glob("*/metrics.json")):
        m = json.loads(p.read_text())
        # metrics written before the train command recorded its device were all from this CPU
        where = m.get("train_device", "cpu: this project's 2-core x86 host")
        print(f"| {p.parent.name} | {m['val_data']} ({m['val_images']}) | {100 * m['val_top1']:.2f}% | "
              f"{m['train_images']} | {m['config']['epochs']} | {m['config']['lr']:g} | {where} | "
              f"{m['train_wall_s']:.0f} | `{m['command']}` |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
