"""Multi-label: any number of labels per sample, BCE on logits, mAP and micro-F1.

mAP comes from per-label histograms of the predicted probabilities (`bins` of them), which add up
over batches and ranks like every other stat: exact up to ties within 1/bins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nnrecipe.errors import UserError
from nnrecipe.tasks.base import Stats, Task


class MultiLabel(Task):
    name = "multilabel"
    targets = "labels"
    directions = {"loss": "minimize", "map": "maximize", "f1": "maximize"}

    def __init__(self, threshold: float = 0.5, bins: int = 1000):
        if not 0 < threshold < 1:
            raise UserError(f"task.threshold={threshold}: use a probability in (0, 1)")
        self.threshold, self.bins = threshold, int(bins)

    def loss(self, outputs, targets):
        if outputs.shape != targets.shape:
            raise UserError(f"multi-label outputs {list(outputs.shape)} and targets "
                            f"{list(targets.shape)} differ in shape: one logit per label")
        return F.binary_cross_entropy_with_logits(outputs.float(), targets.float())

    def distill_loss(self, student, teacher, temperature):
        t = temperature
        soft = torch.sigmoid(teacher.float() / t)
        return F.binary_cross_entropy_with_logits(student.float() / t, soft) * t * t

    def batch_stats(self, outputs, targets) -> Stats:
        logits, y = outputs.float(), targets.float()
        p = torch.sigmoid(logits)
        pred, truth = p >= self.threshold, y > 0.5
        n, labels = y.shape
        bins = (p * self.bins).long().clamp_(0, self.bins - 1)
        slot = (bins + torch.arange(labels, device=y.device) * self.bins).flatten()
        hist = lambda mask: torch.bincount(slot[mask.flatten()],  # noqa: E731
                                           minlength=labels * self.bins).view(labels, -1)
        bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        return {"n": torch.tensor(n, dtype=torch.float64, device=y.device),
                "loss": bce.mean(1).sum().double(),
                "tp": (pred & truth).sum(0).double(), "fp": (pred & ~truth).sum(0).double(),
                "fn": (~pred & truth).sum(0).double(),
                "pos_hist": hist(truth).double(), "neg_hist": hist(~truth).double()}

    def metrics(self, stats):
        n = stats["n"].item()
        tp, fp, fn = (stats[k].sum().item() for k in ("tp", "fp", "fn"))
        return {"loss": stats["loss"].item() / n,
                "map": mean_average_precision(stats["pos_hist"], stats["neg_hist"]),
                "f1": 2 * tp / max(1.0, 2 * tp + fp + fn)}

    def average(self, outputs):
        # mean of the members' probabilities, as logits
        p = torch.stack([torch.sigmoid(o.float()) for o in outputs]).mean(0)
        return torch.logit(p, eps=1e-7)

    def num_outputs(self, train_targets, declared=None):
        return declared or train_targets.shape[1]

    def constant_output(self, train_targets, num_outputs):
        freq = (train_targets.float().sum(0) + 1e-3) / (len(train_targets) + 2e-3)
        return torch.logit(freq)


def mean_average_precision(pos_hist: torch.Tensor, neg_hist: torch.Tensor) -> float:
    """Mean over labels (with at least one positive) of the average precision, from histograms
    of the scores of positives and negatives per label; items in one bin count as tied."""
    pos, neg = pos_hist.flip(1), neg_hist.flip(1)  # highest scores first
    tp, fp = pos.cumsum(1), neg.cumsum(1)
    precision = tp / (tp + fp).clamp_min(1)
    positives = pos.sum(1)
    ap = (pos * precision).sum(1) / positives.clamp_min(1)
    has = positives > 0
    return ap[has].mean().item() if has.any() else float("nan")
