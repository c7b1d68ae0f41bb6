"""Classification: one class per sample, cross-entropy on logits, accuracy."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nnrecipe.errors import UserError
from nnrecipe.tasks.base import Stats, Task


class Classification(Task):
    name = "classification"
    targets = "classes"
    directions = {"loss": "minimize", "acc": "maximize"}

    def __init__(self, label_smoothing: float = 0.0):
        if not 0 <= label_smoothing < 1:
            raise UserError(f"task.label_smoothing={label_smoothing}: use a value in [0, 1)")
        self.label_smoothing = label_smoothing

    def loss(self, outputs, targets):
        if targets.ndim == 2:  # soft targets (mixup/cutmix) carry their own smoothing
            return F.cross_entropy(outputs, targets)
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    def plain_loss(self, outputs, targets):
        return F.cross_entropy(outputs, targets)

    def distill_loss(self, student, teacher, temperature):
        # Hinton et al.: KL between the softened distributions, x T^2 so gradients keep their size
        t = temperature
        return F.kl_div(F.log_softmax(student.float() / t, -1),
                        F.log_softmax(teacher.float() / t, -1),
                        log_target=True, reduction="batchmean") * t * t

    def batch_stats(self, outputs, targets) -> Stats:
        logits = outputs.float()
        labels = targets.argmax(1) if targets.ndim == 2 else targets
        # the evaluation loss is plain cross-entropy: comparable with and without smoothing
        return {"n": torch.tensor(len(labels), dtype=torch.float64, device=logits.device),
                "loss": F.cross_entropy(logits, targets, reduction="sum").double(),
                "correct": (logits.argmax(1) == labels).sum().double()}

    def metrics(self, stats):
        n = stats["n"].item()
        return {"loss": stats["loss"].item() / n, "acc": stats["correct"].item() / n}

    def average(self, outputs):
        # the ensemble's prediction is the mean of the members' probabilities; as logits, its log
        logp = torch.stack([o.float().log_softmax(-1) for o in outputs])
        return logp.logsumexp(0) - math.log(len(outputs))

    def num_outputs(self, train_targets, declared=None):
        return declared or int(train_targets.max().item()) + 1

    def split(self, targets, fractions, seed):
        from nnrecipe.data.sources import stratified_split

        return stratified_split(targets, fractions, seed)

    def constant_output(self, train_targets, num_outputs):
        return class_prior(train_targets, num_outputs).log()


def class_prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class frequencies, smoothed so that a class missing from the labels has a finite log."""
    counts = torch.bincount(labels.cpu().long(), minlength=num_classes).float()
    return (counts + 1e-3) / (counts.sum() + 1e-3 * num_classes)
