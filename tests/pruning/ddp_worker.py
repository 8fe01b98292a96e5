"""Run by tests/prune/test_ddp.py under ``torchrun --nproc_per_node=2``: the same call as a
single process, unchanged; rank 0 writes what it got to the JSON path in argv[1]."""

import json
import os
import sys

import torch

import edgeprune
from tests.nets import FAST, random_batches, small_cnn


def main() -> None:
    torch.set_num_threads(1)
    res = edgeprune.prune(small_cnn(), random_batches(), target="macs", budget_ratio=0.5, config=FAST)
    if int(os.environ.get("RANK", "0")) == 0:
        with open(sys.argv[1], "w") as f:
            json.dump({"widths": res.group_widths_after, "world": int(os.environ["WORLD_SIZE"]),
                       "kl": list(res.student_kl), "predicted": res.predicted_cost,
                       "budget": res.budget}, f)


if __name__ == "__main__":
    main()
