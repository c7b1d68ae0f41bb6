"""Regression: real-valued targets, MSE / Huber / L1, reported as MAE, RMSE and R^2.

Targets are standardised with the training split's mean and std (unless
task.standardize_targets=false), so the loss at init is ~1 whatever the units; MAE and RMSE are
reported in the targets' own units.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nnrecipe.errors import UserError
from nnrecipe.tasks.base import Stats, Task

LOSSES = ("mse", "huber", "l1")


class Regression(Task):
    name = "regression"
    targets = "values"
    directions = {"loss": "minimize", "mae": "minimize", "rmse": "minimize", "r2": "maximize"}

    def __init__(self, loss: str = "mse", huber_delta: float = 1.0,
                 standardize_targets: bool = True):
        if loss not in LOSSES:
            raise UserError(f"task.loss={loss!r}: use one of {', '.join(LOSSES)}")
        if not huber_delta > 0:
            raise UserError(f"task.huber_delta={huber_delta}: must be positive")
        self.kind, self.huber_delta = loss, huber_delta
        self.standardize_targets = standardize_targets
        self.mean, self.std = torch.zeros(1), torch.ones(1)

    def fit_targets(self, train_targets):
        y = _columns(train_targets).double()
        if self.standardize_targets:
            self.mean, self.std = y.mean(0), y.std(0).clamp_min(1e-12)
        else:
            self.mean, self.std = torch.zeros(y.shape[1]), torch.ones(y.shape[1])

    def encode(self, targets):
        y = _columns(targets).float()
        return (y - self.mean.to(y)) / self.std.to(y)

    def decode(self, outputs: torch.Tensor) -> torch.Tensor:
        """Model outputs in the targets' own units."""
        return outputs.float() * self.std.to(outputs.device).float() + \
            self.mean.to(outputs.device).float()

    def loss(self, outputs, targets):
        if outputs.shape != targets.shape:  # [B] vs [B, 1] would broadcast to [B, B] silently
            raise UserError(f"regression outputs {list(outputs.shape)} and targets "
                            f"{list(targets.shape)} differ in shape: return [batch, outputs]")
        return self._elementwise(outputs.float(), targets.float()).mean()

    def _elementwise(self, outputs, targets):
        if self.kind == "mse":
            return F.mse_loss(outputs, targets, reduction="none")
        if self.kind == "huber":
            return F.huber_loss(outputs, targets, delta=self.huber_delta, reduction="none")
        return F.l1_loss(outputs, targets, reduction="none")

    def distill_loss(self, student, teacher, temperature):
        return F.mse_loss(student.float(), teacher.float())

    def batch_stats(self, outputs, targets) -> Stats:
        out, y = outputs.double(), targets.double()
        err = out - y
        return {"n": torch.tensor(len(y), dtype=torch.float64, device=y.device),
                "loss": self._elementwise(out, y).mean(1).sum(),
                "sse": (err ** 2).sum(0), "sae": err.abs().sum(0),
                "sy": y.sum(0), "syy": (y ** 2).sum(0)}

    def metrics(self, stats):
        n = stats["n"].item()
        std = self.std.double().to(stats["sse"].device)
        total = stats["syy"] - stats["sy"] ** 2 / n  # n x variance of each target
        r2 = 1 - stats["sse"] / total.clamp_min(1e-12)
        return {"loss": stats["loss"].item() / n,
                "mae": (stats["sae"] * std).mean().item() / n,
                "rmse": ((stats["sse"] * std ** 2).mean().item() / n) ** 0.5,
                "r2": r2.mean().item()}

    def num_outputs(self, train_targets, declared=None):
        return declared or _columns(train_targets).shape[1]

    def split(self, targets, fractions, seed):
        """Stratified on quantile bins of the (first) target: every split spans its range."""
        from nnrecipe.data.sources import stratified_split

        y = _columns(torch.as_tensor(np.asarray(targets))).double()[:, 0].numpy()
        bins = max(1, min(10, len(y) // 20))
        edges = np.quantile(y, np.linspace(0, 1, bins + 1)[1:-1])
        return stratified_split(np.searchsorted(edges, y, side="right"), fractions, seed)

    def constant_output(self, train_targets, num_outputs):
        y = _columns(train_targets).float()
        # the best constant: the median for L1, the mean for MSE (and close enough for Huber)
        return y.median(0).values if self.kind == "l1" else y.mean(0)


def _columns(y: torch.Tensor) -> torch.Tensor:
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.dtype in (torch.int32, torch.int64):
        return y.reshape(len(y), -1) if y.ndim != 2 else y
    raise UserError(f"regression targets must be numbers, got {y.dtype}")
