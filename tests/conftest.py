from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.nets import TinyNet, randomize_bn


@pytest.fixture
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(TinyNet())
