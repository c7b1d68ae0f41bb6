"""Recipe step 2, "set up the end-to-end skeleton + get dumb baselines", as checks.

Each check is a plain function on a model, a loss and batches that returns a CheckResult, so
it can be called from a notebook. run_preflight() runs them all on the configured model, data
and optimizer before training; they work on copies and on a private RNG stream, so training
afterwards is bit-identical to a run without them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nnrecipe import runtime
from nnrecipe.checks.budget import full_plan
from nnrecipe.checks.data import check_data_batch, check_leakage, check_output_shape, model_in_chans
from nnrecipe.checks.dependencies import (
    check_batch_independence,
    check_eval_determinism,
    check_gradient_flow,
    locate_nonfinite,
)
from nnrecipe.checks.dynamics import PredictionDynamics
from nnrecipe.checks.init import (
    check_init_well,
    check_init_well_task,
    check_loss_at_init,
    expected_init_loss,
    expected_init_loss_task,
)
from nnrecipe.checks.report import (
    FAIL,
    PASS,
    SKIP,
    WARN,
    CheckResult,
    PreflightFailed,
    Report,
    preserved_rng,
)
from nnrecipe.checks.training import (
    adam,
    check_input_independent_baseline,
    check_loss_decreases,
    check_overfit_one_batch,
    optimizer_like,
    train_copy,
)
from nnrecipe.checks.trainings import TrainingChecks, read_batches
from nnrecipe.data import DataBundle, iterate_batches
from nnrecipe.errors import UserError

log = logging.getLogger("nnrecipe")

CHECKS = ["data_batch", "leakage", "output_shape", "init_well", "loss_at_init",
          "batch_independence", "gradient_flow", "eval_determinism", "overfit_one_batch",
          "loss_decreases", "input_independent_baseline"]


def run_preflight(
    model: nn.Module,
    data: DataBundle,
    cfg,
    run_dir: Path | None = None,
    tracker=None,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] = adam,
    augment: Callable | None = None,
    loss_fn: Callable = F.cross_entropy,
    seed: int = 0,
    head_bias_requested: bool = True,
    task=None,
) -> Report:
    """Run every check (cfg: conf/checks), print the table, write checks.json, log to W&B.

    `task` (nnrecipe.tasks; None: classification with `loss_fn`): the loss, the loss expected at
    init, the head's "init well" constant and the output contract come from it.

    Raises PreflightFailed when a check fails and cfg.strict (or cfg.only) is set; a UserError,
    checks on or off, when classification data has a single class (nothing to learn from it).
    """
    if task is None or task.targets == "classes":
        require_two_classes(data)
    check_skip_names(cfg.get("skip"))
    if not cfg.enabled:
        return Report([])
    on_cpu = next(model.parameters()).device.type == "cpu"
    started = time.perf_counter()
    with runtime.threads(_threads(cfg) if on_cpu else None), preserved_rng(seed=None):
        # whatever the checks draw, the global RNG stream is restored afterwards
        results = _run_checks(model, data, cfg, run_dir, make_optimizer, augment, loss_fn,
                              seed, head_bias_requested, task)
    report = Report(results, budget_s=cfg.get("budget_s"),
                    wall_s=time.perf_counter() - started)
    table = report.table()  # in a sweep's console: its last line, the summary, and what failed
    flagged = [f"{r.name} {r.status}" for r in report.results if r.status in (WARN, FAIL)]
    line = "; ".join([f"preflight: {table.splitlines()[-1]}", *flagged])
    log.info("\n%s", table, extra={"sweep_line": line})
    if run_dir is not None:
        report.write_json(Path(run_dir) / "checks.json")
    if tracker is not None:
        report.log_to(tracker, step=0)
    report.raise_if_failed(strict=cfg.strict or cfg.get("only", False))
    return report


def require_two_classes(data: DataBundle) -> None:
    """One class: every loss is 0 and every gradient too; the checks would blame dead units."""
    if data.num_classes < 2:
        root = getattr(data.train, "root", None)
        where = f" in {root}" if root is not None else ""
        found = ", ".join(repr(c) for c in data.class_names) or "none"
        raise UserError(
            f"only one class was found{where} ({found}): a classifier needs at least two. "
            f"Put each class's images in its own subfolder (root/<class>/<image>)")


def check_skip_names(skip) -> None:
    unknown = sorted(set(skip or []) - set(CHECKS))
    if unknown:
        raise UserError(f"checks.skip names unknown checks {unknown}: use {CHECKS}")


def _threads(cfg) -> int:
    """checks.num_threads, or the trainer's threads capped by the cores that are idle now: the
    checks' small steps wait on busy cores even more than training's (2 s -> 100 s measured)."""
    if cfg.get("num_threads"):
        return cfg.num_threads
    runtime.busy_cores(reuse_s=0)  # measured now, not at start: the load may have risen since
    return min(torch.get_num_threads(), runtime.auto_threads()[0])


def _run_checks(model, data, cfg, run_dir, make_optimizer, augment, loss_fn, seed,
                head_bias_requested, task=None) -> list[CheckResult]:
    started = time.perf_counter()
    device = next(model.parameters()).device
    skip = set(cfg.get("skip") or [])
    n = data.num_classes
    # The loop's very first batch: same shuffle seed, same generator type as fit().
    first = next(iterate_batches(data.train, data.batch_size, shuffle=True,
                                 generator=torch.Generator().manual_seed(seed), device=device))
    seen = augment(*first) if augment is not None else first  # what the net really gets
    x, y = first[0][: cfg.batch_size], first[1][: cfg.batch_size]
    size = min(data.batch_size, cfg.batch_size)
    # Large models cost more per step and learn more per step: they get the smaller budget.
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_steps = cfg.steps if n_params <= cfg.large_model_params else cfg.large_model_steps
    # val as the data check compares it with train (more once the trainings' plan is known)
    first_val = read_batches(data.val, max(size, COMPARED_VAL), 1, device)[0][0]
    picture = Path(run_dir) / "batch.png" if run_dir is not None else None
    classes = task is None or task.targets == "classes"  # class-specific checks and messages
    if task is not None:
        loss_fn = task.plain_loss
    if classes:
        expected, why = expected_init_loss(model, data.train.labels, n)
    else:
        expected, why = expected_init_loss_task(model, task, data.train.labels, n)
    trainings = TrainingChecks(model, data, cfg, (x, y), make_optimizer, loss_fn, seed,
                               full_plan(cfg, size, n_steps), expected, started)

    runs = {
        "data_batch": lambda: check_data_batch(
            *seen, n, in_chans=model_in_chans(model) or data.in_chans,
            mean_warn=cfg.input_mean_warn, mean_fail=cfg.input_mean_fail,
            std_warn=tuple(cfg.input_std_warn), std_fail=tuple(cfg.input_std_fail),
            picture=picture, denormalize=data.denormalize if data.mean else None,
            class_names=data.class_names, others={"val": first_val},
            train_labels=data.train.labels, classes=classes, seed=seed,
            reference=data.train.x if data.in_memory and data.image_size == 1 else None),
        "leakage": lambda: check_leakage(data.splits, fail_fraction=cfg.leak_fail_fraction,
                                         seed=seed),
        "output_shape": lambda: check_output_shape(model, x, n, task=task, seed=seed),
        "init_well": (lambda: check_init_well(model, data.train.labels, n,
                                              requested=head_bias_requested, seed=seed))
        if classes else (lambda: check_init_well_task(model, task, data.train.labels, n,
                                                      requested=head_bias_requested, seed=seed)),
        "loss_at_init": lambda: check_loss_at_init(
            model, read_batches(data.train, size, cfg.init_batches, device, seed + 1),
            expected, why, loss_fn, warn_excess=cfg.init_loss_warn,
            fail_excess=cfg.init_loss_fail, slack=cfg.init_loss_slack, seed=seed),
        "batch_independence": lambda: check_batch_independence(
            model, x[: cfg.independence_samples], probes=cfg.independence_probes,
            tol=cfg.independence_tol, seed=seed),
        "gradient_flow": lambda: check_gradient_flow(model, x, y, loss_fn, make_optimizer,
                                                     cfg.gradient_recheck_steps, seed=seed),
        "eval_determinism": lambda: check_eval_determinism(model, x, rtol=cfg.eval_rtol,
                                                           atol=cfg.eval_atol, seed=seed),
        "overfit_one_batch": trainings.overfit,
        "loss_decreases": trainings.decreases,
        "input_independent_baseline": lambda: trainings.baseline(results.get("loss_decreases")),
    }
    results: dict[str, CheckResult] = {}
    for name in CHECKS:
        if name in skip:
            results[name] = CheckResult(name, SKIP, "", "", "in checks.skip")
            continue
        results[name] = runs[name]()
        results[name].shortened = any(m in results[name].message for m in BUDGET_MARKS)
    for r in results.values():
        r.extras.pop("scores", None)
    return [results[name] for name in CHECKS]


COMPARED_VAL = 128  # val samples whose statistics data_batch compares with the train batch
BUDGET_MARKS = ("shortened to fit checks.budget_s", "stopped at the time budget")


def prediction_dynamics(model: nn.Module, data: DataBundle, cfg,
                        untrained: bool = True) -> PredictionDynamics | None:
    """The recorder fit() calls once per epoch, on the first val samples, with the untrained
    model's predictions as epoch 0 (not for a resumed run: `model` is not yet restored);
    None when off."""
    if not (cfg.enabled and cfg.prediction_dynamics) or getattr(data, "targets",
                                                                 "classes") != "classes":
        return None  # p(class) per epoch: a picture of classification only
    device = next(model.parameters()).device
    x, y = read_batches(data.val, cfg.dynamics_samples, 1, device)[0]
    dynamics = PredictionDynamics(x, y, data.class_names)
    if untrained:
        dynamics.record(model, 0)
    return dynamics


def save_dynamics(dynamics: PredictionDynamics | None, run_dir: Path, tracker, step: int) -> None:
    if dynamics is None:
        return
    path = dynamics.draw(Path(run_dir) / "prediction_dynamics.png")
    if path is not None and tracker is not None:
        tracker.image("checks/prediction_dynamics", path, caption="prediction dynamics",
                      step=step)


__all__ = [
    "CHECKS", "FAIL", "PASS", "SKIP", "WARN", "CheckResult", "PredictionDynamics",
    "PreflightFailed", "Report", "adam", "check_batch_independence", "check_data_batch",
    "check_eval_determinism", "check_gradient_flow", "check_init_well", "check_init_well_task",
    "check_input_independent_baseline", "check_leakage", "check_loss_at_init",
    "check_loss_decreases", "check_output_shape", "check_overfit_one_batch",
    "expected_init_loss", "expected_init_loss_task", "locate_nonfinite", "optimizer_like",
    "prediction_dynamics",
    "run_preflight", "save_dynamics", "train_copy",
]
