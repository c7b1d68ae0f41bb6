"""What is learned: the seam between data, model, loop, checks and the squeeze tools.

A task turns model outputs and targets into a loss and metrics, and knows what an untrained or an
input-blind model should score ("init well", the loss at init, the input-independent baseline),
what shape the outputs must have, how to split the data, how to average several models' outputs
(ensembles) and how a student learns from a teacher (distillation). The loop, evaluate(), the
preflight checks and the sweepers' objective ask the task; none of them names a loss.

Evaluation goes through sums: `batch_stats` returns per-batch sums that add up over batches and
over ranks (an all-reduce), and `metrics` turns the totals into numbers. So every metric is exact
however the data is batched or sharded.
"""

from __future__ import annotations

import numpy as np
import torch

from nnrecipe.errors import UserError

Stats = dict[str, torch.Tensor]


class Task:
    name = "task"
    # the kind of targets it learns, as data sources declare theirs (DataBundle.targets):
    # classes (int64 [N]) | values (float [N] or [N, K]) | labels (0/1 float [N, K])
    targets = "values"
    # metric -> direction; each is logged as val/<metric> and test/<metric>, and any of them can
    # be a sweep's `objective` (val/<metric>)
    directions: dict[str, str] = {"loss": "minimize"}

    # --- training -------------------------------------------------------------------------------
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch (what backward() is called on)."""
        raise NotImplementedError

    def plain_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss without training-only regularisation (label smoothing): what the preflight
        checks measure against their expectations; the training loss by default."""
        return self.loss(outputs, targets)

    def distill_loss(self, student: torch.Tensor, teacher: torch.Tensor,
                     temperature: float) -> torch.Tensor:
        """How far the student's outputs are from the teacher's (mean over the batch)."""
        raise NotImplementedError

    # --- evaluation -----------------------------------------------------------------------------
    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor) -> Stats:
        """Sums over the batch (float64 tensors, "n" included) that add over batches and ranks."""
        raise NotImplementedError

    def metrics(self, stats: Stats) -> dict[str, float]:
        """Metric values (keys of `directions`) from summed stats."""
        raise NotImplementedError

    def average(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """Several models' outputs for the same inputs -> one output of the same kind (ensemble)."""
        return torch.stack(outputs).float().mean(0)

    @classmethod
    def objective_direction(cls, objective: str) -> str:
        """'val/<metric>' -> minimize | maximize, for a sweeper (a classmethod: a sweeper's
        config knows the task's class, not its instance)."""
        split, _, metric = str(objective).partition("/")
        if split != "val" or metric not in cls.directions:
            choices = ", ".join(f"val/{m}" for m in cls.directions)
            raise UserError(f"objective={objective!r} is not a metric of task {cls.name}: "
                            f"use one of {choices}")
        return cls.directions[metric]

    @classmethod
    def primary_metric(cls) -> str:
        """The metric a person reads first (accuracy, MAE, mAP): the first one after the loss."""
        return next((m for m in cls.directions if m != "loss"), "loss")

    # --- what the data looks like to the task ---------------------------------------------------
    def fit_targets(self, train_targets: torch.Tensor) -> None:
        """Learn what encode() needs from the training targets (e.g. their mean and std)."""

    def encode(self, targets: torch.Tensor) -> torch.Tensor:
        """Targets as the loss sees them (standardised for regression); identity by default."""
        return targets

    def num_outputs(self, train_targets: torch.Tensor, declared: int | None = None) -> int:
        """Width of the model's output: the declared value, else one per target column."""
        return declared or (1 if train_targets.ndim == 1 else train_targets.shape[1])

    def split(self, targets, fractions: list[float], seed: int) -> list[np.ndarray]:
        """Indices of train plus one split per fraction, fixed by seed."""
        return plain_split(len(targets), fractions, seed)

    # --- what an untrained or input-blind model should do ----------------------------------------
    # (train_targets: as the loss sees them, i.e. after encode(): what the data splits hold)
    def constant_output(self, train_targets: torch.Tensor, num_outputs: int) -> torch.Tensor:
        """The best output a model that ignores its input can give ("init well" head bias)."""
        raise NotImplementedError

    def expected_init_loss(self, train_targets: torch.Tensor, num_outputs: int,
                           head_at_constant: bool) -> tuple[float, str]:
        """The loss a freshly initialised model should have, and why: the loss of the constant
        output when the head's bias holds it, else the loss of all-zero outputs."""
        constant = (self.constant_output(train_targets, num_outputs) if head_at_constant
                    else torch.zeros(num_outputs))
        targets = train_targets
        outputs = constant.to(torch.float32).expand(len(targets), -1)
        value = float(self.loss(outputs, targets))
        why = "the constant output (head bias)" if head_at_constant else "all-zero outputs"
        return value, f"{self.name} loss of {why}"

    def output_problem(self, outputs, batch_size: int, num_outputs: int) -> str | None:
        """What is wrong with a model's output for a batch (None: fits the contract)."""
        expected = f"[{batch_size}, {num_outputs}]"
        if not isinstance(outputs, torch.Tensor):
            return f"the model returned {type(outputs).__name__}: it must return one tensor " \
                   f"{expected}"
        shape = list(outputs.shape)
        if outputs.ndim != 2 or shape[0] != batch_size or shape[1] != num_outputs:
            hint = ("the head has the wrong width: build it from num_classes"
                    if outputs.ndim == 2 and shape[0] == batch_size else
                    "flatten/pool to [B, features] before the head, keep the batch dim first")
            return f"the model returned {shape}, expected {expected}: {hint}"
        if not outputs.is_floating_point():
            return f"the model returned {outputs.dtype} outputs: they must be floating point " \
                   f"(no argmax/rounding inside the model)"
        return None


def plain_split(n: int, fractions: list[float], seed: int) -> list[np.ndarray]:
    """A random split of range(n): round(f x n) indices per fraction (at least one), rest train."""
    order = np.random.default_rng(seed).permutation(n)
    sizes = [max(1, round(f * n)) if f > 0 else 0 for f in fractions]
    if sum(sizes) >= n:
        raise UserError(f"{n} samples are too few for train plus fractions {list(fractions)}: "
                        f"use smaller val/test fractions or more data")
    *carved, train = np.split(order, np.cumsum(sizes))
    return [np.sort(part).astype(np.int64) for part in (train, *carved)]


def add_stats(total: Stats | None, stats: Stats) -> Stats:
    """Accumulate batch stats (the sums of evaluate())."""
    if total is None:
        return {k: v.detach().double().clone() for k, v in stats.items()}
    for k, v in stats.items():
        total[k] += v.detach().double()
    return total


def reduce_stats(stats: Stats, all_reduce_sum) -> Stats:
    """Sum stats over ranks with ONE collective: the tensors flattened into one float64 vector,
    reduced in place by `all_reduce_sum` (nnrecipe.distributed.all_reduce_sum), split back.
    Every rank must hold the same keys and shapes (batch_stats gives fixed shapes)."""
    keys = sorted(stats)
    flat = torch.cat([stats[k].detach().double().reshape(-1) for k in keys])
    all_reduce_sum(flat)
    out, start = {}, 0
    for k in keys:
        n = stats[k].numel()
        out[k] = flat[start:start + n].view(stats[k].shape)
        start += n
    return out
