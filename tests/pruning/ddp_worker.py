"""Run by tests/prune/test_ddp.py under ``torchrun --nproc_per_node=2``: the same call as a
single process, unchanged; rank 0 writes what it got to the JSON path in argv[1]."""

import json
import os
import sys

import torch
from torch import nn

import edgeprune
from tests.nets import FAST, random_batches

DDP_CONFIG = FAST


def plain_cnn() -> nn.Module:
    """No BatchNorm: each rank then computes exactly what one process computes for its half
    of the batch, and the averaged gradients equal one process's up to float rounding. (With
    BatchNorm every rank normalises over its own half; under the dynamic sparse set those
    small differences compound into different near-tie choices, 2-7 channels apart.)"""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def main() -> None:
    torch.set_num_threads(1)
    res = edgeprune.prune(plain_cnn(), random_batches(), target="macs", budget_ratio=0.5, config=DDP_CONFIG)
    if int(os.environ.get("RANK", "0")) == 0:
        with open(sys.argv[1], "w") as f:
            json.dump({"widths": res.group_widths_after, "world": int(os.environ["WORLD_SIZE"]),
                       "kl": list(res.student_kl), "predicted": res.predicted_cost,
                       "budget": res.budget}, f)


if __name__ == "__main__":
    main()
