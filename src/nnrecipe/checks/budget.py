"""The preflight's time budget: the training checks sized so the whole preflight fits
`checks.budget_s`.

The three training checks (overfit_one_batch, loss_decreases, input_independent_baseline) cost
steps x samples x the model's cost per sample. Their full sizes are ~5,000 sample-steps: nothing
for the digits, but the default convnet on 64x64 images costs ~14 ms a sample on one core, and
the same checks took 75 s. One timed step on a copy measures that cost; the plan then shrinks
samples before steps (Adam's progress per step barely depends on the batch size, and a check's
verdict rests on steps) and says which checks it shortened. A check that was shortened cannot
FAIL for having learned too little in its steps: that is weak evidence after a few steps.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

EVAL_COST = 1 / 3      # a no-grad forward costs about a third of a training step
MIN_BATCH = 8          # smallest batch the loss-decrease and baseline trainings use
MIN_STEPS = 10         # ... and their fewest steps: below, the loss curve is mostly noise
MIN_VAL = 64           # fewest validation samples that judge the baseline
OVERFIT_SIZES = (16, 8, 4)  # samples the overfit check may memorise, largest first
OVERFIT_WANTS = 100    # steps it should be able to take (the convnet memorises 16 in ~60)
MIN_OVERFIT_STEPS = 20
OVERFIT_SHARE = 1 / 2  # of the time left after the quick checks (it stops early when it can:
                       # the two trainings are sized after it, with what it left)


@dataclass
class Plan:
    """Sizes of the training checks; `full` holds the configured ones."""

    batch: int
    steps: int
    distinct: int
    val_samples: int
    overfit_samples: int
    overfit_steps: int
    full: dict = field(default_factory=dict)
    seconds_per_sample: float | None = None
    budget_s: float | None = None
    deadline: float | None = None  # time.perf_counter() at which the budget is spent

    def shortened(self, check: str) -> str:
        """'' or what the budget took from `check`, for its row and the summary."""
        if check == "overfit_one_batch":
            cut = (self.overfit_samples, self.overfit_steps)
            full = (self.full["overfit_samples"], self.full["overfit_steps"])
            what = f"at most {self.overfit_steps} steps on {self.overfit_samples} samples"
        elif check in ("loss_decreases", "input_independent_baseline"):
            cut = (self.batch, self.steps, self.val_samples)
            full = (self.full["batch"], self.full["steps"], self.full["val_samples"])
            what = f"{self.steps} steps of {self.batch} samples"
            if check == "input_independent_baseline":
                what += f", {self.val_samples} val samples"
        else:
            return ""
        if all(c >= f for c, f in zip(cut, full, strict=True)):
            return ""
        return f"shortened to fit checks.budget_s={self.budget_s:g}: {what}"


def full_plan(cfg, batch: int, steps: int) -> Plan:
    """The configured sizes, nothing shortened."""
    sizes = {"batch": batch, "steps": steps, "val_samples": cfg.val_samples,
             "overfit_samples": cfg.overfit_samples, "overfit_steps": cfg.overfit_steps}
    distinct = min(steps, cfg.distinct_batches)
    return Plan(distinct=distinct, full={**sizes, "distinct": distinct}, **sizes)


def plan_checks(full: Plan, seconds_left: float, per_sample: float | None,
                budget_s: float) -> Plan:
    """Shrink `full` until the training checks' estimated cost fits `seconds_left`.

    `per_sample`: seconds of one training step per sample (None: unmeasured, keep `full`).
    The overfit check runs first and usually stops early: it may take what the two trainings
    at full size leave (at least OVERFIT_SHARE); replan_trainings() then gives them what the
    overfit check left.
    """
    plan = copy.copy(full)
    plan.budget_s, plan.seconds_per_sample = budget_s, per_sample
    plan.deadline = time.perf_counter() + max(0.0, seconds_left)
    if not per_sample:
        return plan
    left = max(0.0, seconds_left)
    trainings = _trainings_cost(full.batch, full.steps, full.distinct, full.val_samples,
                                per_sample)
    _size_overfit(plan, max(OVERFIT_SHARE * left, left - trainings), per_sample)
    _size_trainings(plan, (1 - OVERFIT_SHARE) * left, per_sample)
    return plan


def replan_trainings(plan: Plan) -> Plan:
    """The two trainings sized to the time left now (the overfit check has run)."""
    if not plan.seconds_per_sample or plan.deadline is None:
        return plan
    sized = copy.copy(plan)
    sized.batch, sized.steps, sized.val_samples = (plan.full[k] for k in
                                                   ("batch", "steps", "val_samples"))
    sized.distinct = min(sized.steps, plan.full.get("distinct", plan.distinct))
    _size_trainings(sized, plan.deadline - time.perf_counter(), plan.seconds_per_sample)
    return sized


def _trainings_cost(batch: int, steps: int, distinct: int, val: int, c: float) -> float:
    """Seconds of loss_decreases + the baseline: two trainings, the evaluations (the pool
    before and after, val for both copies)."""
    return c * (2 * batch * steps + EVAL_COST * (2 * batch * distinct + 2 * val))


def _size_trainings(plan: Plan, seconds: float, c: float) -> None:
    """loss_decreases and the baseline: fewer samples first, then fewer validation samples,
    then fewer steps (never below MIN_STEPS)."""
    full = plan.full
    batches = sorted({full["batch"], *(b for b in (16, MIN_BATCH) if b < full["batch"])},
                     reverse=True)
    for batch in batches:
        for val in (full["val_samples"], min(full["val_samples"], MIN_VAL)):
            if _trainings_cost(batch, full["steps"], plan.distinct, val, c) <= seconds:
                plan.batch, plan.val_samples = batch, val
                return
    plan.batch, plan.val_samples = batches[-1], min(full["val_samples"], MIN_VAL)
    distinct = max(1, min(plan.distinct, MIN_STEPS // 3))
    evals = _trainings_cost(plan.batch, 0, distinct, plan.val_samples, c)
    steps = int((seconds - evals) / (2 * c * plan.batch))
    plan.steps = max(min(MIN_STEPS, full["steps"]), min(full["steps"], steps))
    plan.distinct = max(1, min(plan.distinct, plan.steps // 3))


def _size_overfit(plan: Plan, seconds: float, c: float) -> None:
    full_samples, full_steps = plan.full["overfit_samples"], plan.full["overfit_steps"]
    sizes = [s for s in OVERFIT_SIZES if s < full_samples] or [full_samples]
    for samples in [full_samples, *sizes]:
        affordable = int(seconds / (c * samples))
        if affordable >= min(full_steps, OVERFIT_WANTS):
            plan.overfit_samples, plan.overfit_steps = samples, min(full_steps, affordable)
            return
    plan.overfit_samples = sizes[-1]
    affordable = int(seconds / (c * plan.overfit_samples))
    plan.overfit_steps = max(min(MIN_OVERFIT_STEPS, full_steps), min(full_steps, affordable))


def seconds_per_sample(model: nn.Module, make_optimizer: Callable, x: torch.Tensor,
                       y: torch.Tensor, loss_fn: Callable) -> float | None:
    """One training step on a copy, timed after a warm-up step, per sample; None when the
    model cannot train here (the checks themselves will say why)."""
    net = copy.deepcopy(model).train()
    try:
        optimizer = make_optimizer(net)
        for timed in (False, True):
            _sync(x.device)
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            optimizer.step()
            _sync(x.device)
            if timed:
                return (time.perf_counter() - start) / max(1, len(x))
    except Exception:  # OOM, a broken model: the checks that follow report it
        return None
    finally:
        del net
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
