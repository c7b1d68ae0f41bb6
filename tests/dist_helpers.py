"""Models for tests/test_distributed.py, importable by the torchrun workers (PYTHONPATH=tests)."""

import os
import signal

import torch
import torch.distributed as dist
from torch import nn

from nnrecipe.models.simple import ConvNet


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


class SignalledConvNet(ConvNet):
    """nnrecipe's ConvNet that sends SIGTERM to its own process (rank 0) during training
    forward number `signal_at` (0: never): a preemption at a known step."""

    def __init__(self, num_classes: int, in_chans: int, signal_at: int = 0, **kwargs):
        super().__init__(num_classes, in_chans, **kwargs)
        self.signal_at, self.calls = signal_at, 0

    def forward(self, x):
        if self.training and self.signal_at and dist.is_initialized() and dist.get_rank() == 0:
            self.calls += 1
            if self.calls == self.signal_at:
                os.kill(os.getpid(), signal.SIGTERM)
        return super().forward(x)


class FailsOnRankOne(nn.Module):
    """A model whose construction fails with a UserError on rank 1 only (say, a file that only
    one node lacks)."""

    def __init__(self, num_classes: int, in_chans: int):
        super().__init__()
        if dist.is_initialized() and dist.get_rank() == 1:
            from nnrecipe.errors import UserError

            raise UserError("model: weights file missing on rank 1's node")
        self.head = nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    def forward(self, x):
        return self.head(x)
