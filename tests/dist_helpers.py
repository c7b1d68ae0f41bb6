"""Models for tests/test_distributed.py, importable by the torchrun workers (PYTHONPATH=tests)."""

import torch
import torch.distributed as dist
from torch import nn


class NaNOnRankOne(nn.Module):
    """A linear model whose loss becomes NaN on rank 1 only, from its 5th training step."""

    def __init__(self, num_classes: int, in_chans: int):
        super().__init__()
        self.head = nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
        self.calls = 0

    def forward(self, x):
        out = self.head(x)
        if self.training and dist.is_initialized() and dist.get_rank() == 1:
            self.calls += 1
            if self.calls >= 5:
                out = out * torch.nan
        return out
