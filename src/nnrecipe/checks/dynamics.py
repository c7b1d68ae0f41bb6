"""Prediction dynamics: class probabilities on a fixed validation batch, once per epoch."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class PredictionDynamics:
    """Record softmax(model(x)) on a fixed batch; draw one small panel per sample.

    record() runs in eval mode under no_grad: no RNG draw, no BatchNorm update, so training
    is unchanged by it.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, class_names: list[str] | None = None):
        self.x, self.y = x, y
        self.class_names = class_names
        self.epochs: list[int] = []
        self.probs: list[torch.Tensor] = []  # one [n, C] per record

    @torch.no_grad()
    def record(self, model: nn.Module, epoch: int) -> None:
        was_training = model.training
        model.eval()
        self.probs.append(model(self.x).float().softmax(-1).cpu())
        model.train(was_training)
        self.epochs.append(epoch)

    def draw(self, path: Path) -> Path | None:
        if not self.probs:
            return None
        from nnrecipe.plots import probability_lines

        probs = torch.stack(self.probs, 1)  # [n, epochs, C]
        names = self.class_names or [str(c) for c in range(probs.shape[-1])]
        truth = self.y.cpu().tolist()
        final = probs[:, -1].argmax(-1).tolist()
        titles = [f"true {names[t]} · pred {names[p]}" for t, p in zip(truth, final, strict=True)]
        return probability_lines(
            probs, self.epochs, truth, path, titles,
            title="prediction dynamics: p(class) per epoch on a fixed val batch "
                  "(green: the true class)",
        )
