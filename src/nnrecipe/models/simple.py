"""Models simple enough that a bug in them is unlikely: the recipe's first choice."""

from __future__ import annotations

import torch
from torch import nn


class ConvNet(nn.Module):
    """Stages of two 3x3 conv-BatchNorm-ReLU layers with max-pooling between stages, then a
    small average pool (pool x pool, so the head still sees where strokes are) and a Linear.

    `dropout`: on the features before the head. `spatial_dropout`: Dropout2d at the end of each
    stage, dropping whole channels (neighbouring pixels are correlated, so dropping single
    activations barely regularises a conv layer)."""

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 3,
        widths=(32, 64),
        batchnorm: bool = True,
        pool: int = 2,
        dropout: float = 0.0,
        spatial_dropout: float = 0.0,
    ):
        super().__init__()
        layers, c = [], in_chans
        for i, w in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            for j in range(2):
                layers.append(nn.Conv2d(c, w, 3, padding=1, bias=not batchnorm))
                layers += [nn.BatchNorm2d(w)] if batchnorm else []
                # the stage's last ReLU carries the Dropout2d: no new index in `features`, so
                # checkpoints load whatever spatial_dropout is
                end = j == 1 and spatial_dropout > 0
                layers.append(nn.Sequential(nn.ReLU(inplace=True), nn.Dropout2d(spatial_dropout))
                              if end else nn.ReLU(inplace=True))
                c = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(pool), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c * pool * pool, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


class Linear(nn.Module):
    """Logistic regression on flattened pixels."""

    def __init__(self, num_classes: int, in_chans: int, image_size: int):
        super().__init__()
        self.head = nn.Linear(in_chans * image_size * image_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


class MLP(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_chans: int,
        image_size: int,
        hidden: int = 256,
        depth: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        layers, d = [nn.Flatten()], in_chans * image_size * image_size
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            d = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
