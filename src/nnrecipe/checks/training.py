"""Short trainings on copies: overfit one batch, loss decreases, input-independent baseline."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnrecipe.checks.report import FAIL, PASS, WARN, CheckResult, timed_check

Batch = tuple[torch.Tensor, torch.Tensor]


def adam(model: nn.Module) -> torch.optim.Optimizer:
    """The recipe's default optimizer, for checks called without one."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-4)


def optimizer_like(optimizer: torch.optim.Optimizer,
                   model: nn.Module) -> Callable[[nn.Module], torch.optim.Optimizer]:
    """A factory giving a deep copy of `model` a fresh optimizer of `optimizer`'s class, groups
    and hyper-parameters (parameters matched by position, which deepcopy keeps).

    Call it before a schedule changes the lr (a warmup starts near 0).
    """
    originals = list(model.parameters())

    def make(model_copy: nn.Module) -> torch.optim.Optimizer:
        mapping = {id(p): q for p, q in zip(originals, model_copy.parameters(), strict=True)}
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [mapping[id(p)] for p in g["params"]]}
                  for g in optimizer.param_groups]
        return type(optimizer)(groups, **optimizer.defaults)

    return make


def train_copy(model: nn.Module, make_optimizer: Callable, batches: Sequence[Batch],
               loss_fn: Callable = F.cross_entropy, zero_inputs: bool = False,
               stop: Callable[[list[float]], bool] | None = None,
               deadline: float | None = None, min_steps: int = 10,
               ) -> tuple[nn.Module, list[float]]:
    """Train a deep copy on `batches` (one step each), return it and the per-step losses.

    Stops at the first non-finite loss, when `stop(losses so far)` says so, or at `deadline`
    (time.perf_counter(); the budget's safety net when a step costs more than measured) once
    `min_steps` steps are done.
    """
    net = copy.deepcopy(model).train()
    optimizer = make_optimizer(net)
    losses = []
    for x, y in batches:
        if zero_inputs:
            x = torch.zeros_like(x)
        loss = loss_fn(net(x), y)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]) or (stop is not None and stop(losses)):
            break
        if deadline is not None and len(losses) >= min_steps and time.perf_counter() > deadline:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return net, losses


@torch.no_grad()
def eval_loss(model: nn.Module, batches: Sequence[Batch], loss_fn: Callable = F.cross_entropy,
              zero_inputs: bool = False) -> tuple[float, float]:
    """Mean loss and accuracy in eval mode (the model's mode is restored); accuracy is NaN for
    targets that are not classes (regression values, multi-label rows)."""
    was_training = model.training
    model.eval()
    total, correct, n = 0.0, 0, 0
    for x, y in batches:
        x = torch.zeros_like(x) if zero_inputs else x
        logits = model(x).float()
        total += loss_fn(logits, y).item() * len(x)
        if not y.is_floating_point():
            correct += (logits.argmax(1) == y).sum().item()
        elif y.ndim == 2 and logits.shape == y.shape and y.sum(1).allclose(y.new_ones(len(y))):
            correct += (logits.argmax(1) == y.argmax(1)).sum().item()  # soft class targets
        else:
            correct = math.nan
        n += len(x)
    model.train(was_training)
    return total / max(1, n), correct / max(1, n)


@timed_check("overfit_one_batch")
def check_overfit_one_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                            make_optimizer: Callable = adam, loss_fn: Callable = F.cross_entropy,
                            steps: int = 1000, target: float = 0.2,
                            warn_ratio: float = 0.5, patience: int = 50,
                            reference: float | None = None,
                            shortened: str = "", deadline: float | None = None) -> CheckResult:
    """A copy trained on one small batch must drive its loss below `target` within `steps`.

    Stops at the target, or when the loss (mean of 10 steps) has not improved by 1% over the
    last `patience` steps: a dead or wild optimizer does not get the whole budget. The loss
    counted is the lower of the last training-mode loss and the eval-mode loss, so dropout's
    noise does not hide a batch that is in fact memorised. `reference`: the loss expected at
    init (a constant output's); "learns" (WARN, not FAIL) means below warn_ratio of the lower
    of it and the first loss, so a squashed output's inflated first loss does not count.
    `shortened`: what the time budget took from the check (then running out of steps while
    learning is a WARN, not a FAIL).
    """
    name = "overfit_one_batch"
    expected = f"loss < {target:g} within {steps} steps on {len(x)} samples"

    def stop(losses: list[float]) -> bool:
        if losses[-1] < target:
            return True
        if len(losses) > patience and (len(losses) - 1) % patience == 0:
            recent, earlier = losses[-10:], losses[-patience - 10:-patience] or losses[:1]
            return sum(recent) / len(recent) > 0.99 * sum(earlier) / len(earlier)  # stalled
        return False

    net, losses = train_copy(model, make_optimizer, [(x, y)] * steps, loss_fn, stop=stop,
                             deadline=deadline, min_steps=min(steps, 20))
    final = losses[-1]
    if math.isfinite(final) and final >= target:
        final = min(final, eval_loss(net, [(x, y)], loss_fn)[0])
    del net
    measured = f"{losses[0]:.3f} -> {final:.3g} in {len(losses)} steps"
    cut = shortened or (f"stopped at the time budget after {len(losses)} of {steps} steps"
                        if len(losses) < steps and not final < target and deadline is not None
                        and time.perf_counter() > deadline else "")
    result = dict(extras={"losses": losses})
    if not math.isfinite(final):
        return CheckResult(name, FAIL, measured, expected,
                           "the loss became NaN/Inf: learning rate far too high, or a NaN "
                           "in the model (see gradient_flow)", **result)
    if final < target:
        return CheckResult(name, PASS, measured, expected, cut, **result)
    start = losses[0] if reference is None else min(losses[0], reference)
    if final < warn_ratio * start or (cut and final < start):
        return CheckResult(name, WARN, measured, expected, _joined(
            "learns but cannot memorise one batch in the budget: learning rate low, strong "
            "regularisation, or the model too small" if not cut else
            "learns, but had too few steps to memorise the batch: raise checks.budget_s for "
            "a verdict", cut), **result)
    return CheckResult(name, FAIL, measured, expected, _joined(
        "cannot memorise a single batch: learning rate far off (too high or too low), outputs "
        "squashed before the loss (softmax before cross-entropy), or gradients not reaching "
        "the weights", cut), **result)


def _joined(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


@timed_check("loss_decreases")
def check_loss_decreases(model: nn.Module, batches: Sequence[Batch], cycle: int,
                         make_optimizer: Callable = adam, loss_fn: Callable = F.cross_entropy,
                         fail_drop: float = 0.01, warn_drop: float = 0.05,
                         full_steps: int | None = None, shortened: str = "",
                         val: Sequence[Batch] | None = None,
                         deadline: float | None = None) -> CheckResult:
    """A copy trained one step per batch; `batches` repeats a pool of `cycle` batches.

    The training loss over the last pass through the pool is compared with the untrained
    copy's loss on the same pool (both in training mode): same samples, so the drop is not
    batch-to-batch noise. It must drop by warn_drop (WARN below) and stay finite. When the
    budget cut the steps below `full_steps`, both thresholds shrink in proportion (early on
    the loss falls about linearly with the steps). The trained copy's scores on the pool and
    on `val` are kept in `.extras["scores"]` for the input-independent baseline (the copy
    itself is freed: one model copy at a time), with `.extras["steps"]` it took.
    """
    name = "loss_decreases"
    cycle = max(1, min(cycle, len(batches)))
    with torch.no_grad():
        untrained = copy.deepcopy(model).train()
        before = sum(loss_fn(untrained(x), y).item() for x, y in batches[:cycle]) / cycle
        del untrained
    net, losses = train_copy(model, make_optimizer, batches, loss_fn, deadline=deadline,
                             min_steps=min(len(batches), max(10, 2 * cycle)))
    if len(losses) < len(batches) and math.isfinite(losses[-1]):
        shortened = shortened or f"stopped at the time budget after {len(losses)} steps"
    scale = min(1.0, len(losses) / full_steps) if full_steps else 1.0
    fail_drop, warn_drop = fail_drop * scale, warn_drop * scale
    expected = f"finite, loss drops >= {warn_drop:.1%} in {len(losses)} steps"
    after = sum(losses[-cycle:]) / len(losses[-cycle:])
    drop = 1 - after / before if math.isfinite(after) and before > 0 else -math.inf
    measured = f"{before:.3f} -> {after:.3f} ({-drop:+.0%}) over {len(losses)} steps"
    distinct = list(batches[:cycle])
    scores = (eval_loss(net, distinct, loss_fn)[0], *eval_loss(net, val, loss_fn)) if (
        val is not None and all(math.isfinite(v) for v in losses)) else None
    del net
    extras = {"scores": scores, "losses": losses, "steps": len(losses)}
    if not all(math.isfinite(v) for v in losses):
        return CheckResult(name, FAIL, measured, expected,
                           f"the loss became NaN/Inf at step {len(losses)}: lower the learning "
                           f"rate, or set trainer.grad_clip_norm", extras=extras)
    if drop < fail_drop:
        rose = max(losses) > 2 * before
        return CheckResult(name, FAIL, measured, expected, _joined(
            "the loss shoots up: learning rate far too high" if rose else
            "the loss does not go down: learning rate far too low, or the gradient does not "
            "reach the weights", shortened), extras=extras)
    if drop < warn_drop:
        return CheckResult(name, WARN, measured, expected, _joined(
            "the loss goes down slowly: learning rate low?", shortened), extras=extras)
    return CheckResult(name, PASS, measured, expected, shortened, extras=extras)


@timed_check("input_independent_baseline")
def check_input_independent_baseline(model: nn.Module, batches: Sequence[Batch],
                                     val: Sequence[Batch], make_optimizer: Callable = adam,
                                     loss_fn: Callable = F.cross_entropy,
                                     real: tuple[float, float, float] | None = None,
                                     min_learned: float = 0.01, fail_carry: float = 0.2,
                                     warn_gain: float = 0.005, shortened: str = "",
                                     deadline: float | None = None) -> CheckResult:
    """A copy trained on zeroed inputs vs one trained on the real inputs, same batches and steps.

    What the inputs buy: on the training batches, learned = zero-input val loss - real train
    loss; on validation, gain = zero-input val loss - real val loss. FAIL when the inputs buy
    nothing even on the training batches (< min_learned, relative), or when less than
    `fail_carry` of it carries over to validation (labels unrelated to the inputs: the model
    can only memorise). `real`: the really trained copy's (train loss on the distinct batches,
    val loss, val acc), from loss_decreases; trained here when None. Only one copy lives at a
    time. A check the budget `shortened` WARNs where it would FAIL: a few steps prove little.
    """
    name = "input_independent_baseline"
    expected = f"real beats zero-input on val (>= {warn_gain:.1%}, >= {fail_carry:.0%} of train)"
    distinct = list({id(b): b for b in batches}.values())
    if real is None:
        trained, _ = train_copy(model, make_optimizer, batches, loss_fn)
        real = (eval_loss(trained, distinct, loss_fn)[0], *eval_loss(trained, val, loss_fn))
        del trained
    train_loss, real_loss, real_acc = real
    zero_model, _ = train_copy(model, make_optimizer, batches, loss_fn, zero_inputs=True,
                               deadline=deadline, min_steps=len(batches))
    zero_loss, zero_acc = eval_loss(zero_model, val, loss_fn, zero_inputs=True)
    del zero_model
    learned, gain = (zero_loss - train_loss) / zero_loss, (zero_loss - real_loss) / zero_loss
    carry = gain / learned if learned > 0 else math.nan
    acc = (lambda a: f" (acc {a:.2f})" if math.isfinite(a) else "")  # noqa: E731
    measured = (f"val loss {real_loss:.3f}{acc(real_acc)} vs zero-input {zero_loss:.3f}"
                f"{acc(zero_acc)}: {gain:+.0%}; train {-learned:+.0%}, carried {carry:.0%}")
    weak = WARN if shortened else FAIL
    if not math.isfinite(gain) or not learned >= min_learned:
        return CheckResult(name, weak if math.isfinite(gain) else FAIL, measured, expected,
                           _joined("the inputs do not help even on the training batches: the "
                                   "model ignores its input (or does not train: see "
                                   "loss_decreases)", shortened))
    if carry < fail_carry:
        return CheckResult(name, weak, measured, expected, _joined(
            "the model learns its training batches but that does not carry over to "
            "validation: the labels do not depend on the inputs (shuffled apart? val labelled "
            "differently?)", shortened))
    if gain < warn_gain:
        return CheckResult(name, WARN, measured, expected, _joined(
            "barely better than input-blind after a short training: a hard task, or the "
            "inputs barely reach the output", shortened))
    return CheckResult(name, PASS, measured, expected, shortened)
