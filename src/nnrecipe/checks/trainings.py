"""The three training checks inside the preflight, sized to `checks.budget_s` when they run.

The first of them to run times one step on a copy and plans their sizes (checks/budget.py);
the overfit check takes its share, then the two others are sized with the time it left and
share their batches: the baseline reuses the scores of loss_decreases' trained copy, so only
one copy of the model lives at a time.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import torch

from nnrecipe.checks.budget import Plan, plan_checks, replan_trainings, seconds_per_sample
from nnrecipe.checks.report import CheckResult
from nnrecipe.checks.training import (
    check_input_independent_baseline,
    check_loss_decreases,
    check_overfit_one_batch,
)
from nnrecipe.data import iterate_batches

PROBE_SAMPLES = 8  # the timed step's batch: small, its time is spent too


class TrainingChecks:
    """overfit(), decreases(), baseline(): the checks on short trainings of copies."""

    def __init__(self, model, data, cfg, batch: tuple[torch.Tensor, torch.Tensor],
                 make_optimizer: Callable, loss_fn: Callable, seed: int, full: Plan,
                 reference: float, started: float):
        self.model, self.data, self.cfg = model, data, cfg
        self.x, self.y = batch
        self.make_optimizer, self.loss_fn, self.seed = make_optimizer, loss_fn, seed
        self.full, self.reference, self.started = full, reference, started
        self.device = self.x.device
        self.plan: Plan | None = None
        self.steps: list | None = None  # the two trainings' batches, one per step
        self.cycle, self.val = 1, []

    def overfit(self) -> CheckResult:
        sized = self._sized("overfit_one_batch")
        k, cfg = self.plan.overfit_samples, self.cfg
        return check_overfit_one_batch(
            self.model, self.x[:k], self.y[:k], self.make_optimizer, self.loss_fn,
            steps=self.plan.overfit_steps, target=cfg.overfit_loss,
            warn_ratio=cfg.overfit_warn_ratio, patience=cfg.overfit_patience,
            reference=self.reference, seed=self.seed, **sized)

    def decreases(self) -> CheckResult:
        sized = self._sized("loss_decreases")
        if sized["deadline"] is not None:  # half of what is left: the baseline trains as long
            now = time.perf_counter()
            sized["deadline"] = now + max(0.0, sized["deadline"] - now) / 2
        return check_loss_decreases(
            self.model, self.steps, self.cycle, self.make_optimizer, self.loss_fn,
            fail_drop=self.cfg.decrease_fail, warn_drop=self.cfg.decrease_warn,
            full_steps=self.full.steps, val=self.val, seed=self.seed, **sized)

    def baseline(self, decreases: CheckResult | None) -> CheckResult:
        """`decreases`: loss_decreases' result (its trained copy's scores and steps), if run."""
        sized = self._sized("input_independent_baseline")
        extras = decreases.extras if decreases is not None else {}
        scores = extras.get("scores")
        steps = self.steps[: extras.get("steps")] if scores is not None else self.steps
        cfg = self.cfg
        return check_input_independent_baseline(
            self.model, steps, self.val, self.make_optimizer, self.loss_fn, real=scores,
            min_learned=cfg.baseline_min_learned, fail_carry=cfg.baseline_fail_carry,
            warn_gain=cfg.baseline_warn, seed=self.seed, **sized)

    def _sized(self, name: str) -> dict:
        if self.plan is None:
            self._plan()
        if name != "overfit_one_batch" and self.steps is None:
            self._draw_batches()
        return {"shortened": self.plan.shortened(name), "deadline": self.plan.deadline}

    def _plan(self) -> None:
        """After the quick checks: time one step on a copy, size the training checks."""
        budget = self.cfg.get("budget_s")
        if not budget:
            self.plan = self.full
            return
        probe = slice(0, min(len(self.x), PROBE_SAMPLES))
        per_sample = seconds_per_sample(self.model, self.make_optimizer, self.x[probe],
                                        self.y[probe], self.loss_fn)
        left = budget - (time.perf_counter() - self.started)
        self.plan = plan_checks(self.full, left, per_sample, budget)

    def _draw_batches(self) -> None:
        """The two trainings' batches, sized with the time the overfit check left."""
        self.plan = p = replan_trainings(self.plan)
        pool = read_batches(self.data.train, p.batch, min(p.steps, p.distinct), self.device,
                            self.seed + 1)
        self.cycle = len(pool)
        self.steps = list(itertools.islice(itertools.cycle(pool), p.steps))
        self.val = read_batches(self.data.val, min(p.val_samples, 512),
                                -(-p.val_samples // 512), self.device)


def read_batches(split, batch_size: int, count: int, device, seed: int | None = None) -> list:
    """`count` batches of a split: shuffled by `seed`, or in order for None.

    Always with a private generator: a DataLoader iterator draws its base seed from the global
    RNG when it has none, which would shift training's stream (prediction_dynamics runs
    outside the preflight's RNG guard).
    """
    generator = torch.Generator().manual_seed(seed if seed is not None else 0)
    batches = iterate_batches(split, batch_size, shuffle=seed is not None, generator=generator,
                              device=device)
    # copies: unshuffled batches are views of the dataset, and a model may write to its input
    return [(x.clone(), y.clone()) for x, y in itertools.islice(batches, max(1, count))]
