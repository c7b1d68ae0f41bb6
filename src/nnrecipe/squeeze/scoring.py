"""Outputs -> metrics through the run's Task, with 95% intervals and, for classification,
per-class accuracy and the confusion matrix."""

from __future__ import annotations

import torch

from nnrecipe.squeeze.stats import format_interval, mean_interval, wilson_interval
from nnrecipe.tasks import add_stats


def metrics(task, outputs: torch.Tensor, targets: torch.Tensor, batch: int = 4096) -> dict:
    """The task's metrics of the whole split (summed batch stats, as evaluate() sums them)."""
    total = None
    for i in range(0, len(targets), batch):
        total = add_stats(total, task.batch_stats(outputs[i:i + batch], targets[i:i + batch]))
    return task.metrics(total)


def per_sample_loss(task, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each sample's evaluation loss (the task's batch_stats "loss" of a batch of one)."""
    from nnrecipe.tasks import Classification

    if type(task) is Classification and targets.ndim == 1:  # the same numbers, in one call
        return torch.nn.functional.cross_entropy(outputs.float(), targets, reduction="none")
    return torch.stack([task.batch_stats(outputs[i:i + 1], targets[i:i + 1])["loss"]
                        for i in range(len(targets))])


def is_classification(outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    return outputs.ndim == 2 and targets.ndim == 1 and not targets.is_floating_point()


def score(task, outputs: torch.Tensor, targets: torch.Tensor) -> dict:
    """metrics plus `loss_ci` (normal interval of the mean loss) and, for classification,
    `acc_ci` (Wilson), `correct`, `n`, `per_class` [(class, n, acc, ci)], `confusion`."""
    out = dict(metrics(task, outputs, targets))
    out["n"] = len(targets)
    out["loss_ci"] = mean_interval(per_sample_loss(task, outputs, targets))
    if is_classification(outputs, targets):
        pred = outputs.argmax(1)
        correct = int((pred == targets).sum())
        out["correct"], out["acc_ci"] = correct, wilson_interval(correct, len(targets))
        c = outputs.shape[1]
        confusion = torch.bincount(targets * c + pred, minlength=c * c).view(c, c)
        out["confusion"] = confusion.tolist()
        out["per_class"] = [
            (k, int(confusion[k].sum()), _ratio(confusion[k, k], confusion[k].sum()),
             wilson_interval(int(confusion[k, k]), int(confusion[k].sum())))
            for k in range(c)]
    return out


def _ratio(a, b) -> float:
    return float(a) / float(b) if b else float("nan")


def summary_line(name: str, s: dict) -> str:
    """`name: loss 0.1234 [..]  acc 0.9630 [..] (n=270)` — one member, one split."""
    parts = [f"loss {format_interval(s['loss'], s['loss_ci'])}"]
    if "acc_ci" in s:
        parts.append(f"acc {format_interval(s['acc'], s['acc_ci'])}")
    parts += [f"{k} {v:.4f}" for k, v in s.items()
              if k not in ("loss", "acc", "n", "correct") and isinstance(v, float)]
    return f"{name}: " + "  ".join(parts) + f"  (n={s['n']})"


def plain(s: dict) -> dict:
    """A score as JSON/W&B-friendly numbers (no confusion matrix)."""
    out = {k: v for k, v in s.items() if isinstance(v, (int, float))}
    for key in ("loss_ci", "acc_ci"):
        if key in s:
            out[f"{key}_low"], out[f"{key}_high"] = s[key]
    return out
