"""Loss at init and "init well": an untrained classifier should predict the class prior."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from nnrecipe.checks.report import FAIL, PASS, WARN, CheckResult, timed_check
from nnrecipe.models.build import class_prior, classifier_head


def head_bias_is_prior(model: nn.Module, prior: torch.Tensor) -> bool:
    """True when the head's bias is the log prior (up to a constant: softmax ignores it)."""
    head = classifier_head(model)
    if head is None or head.bias is None or head.bias.numel() != len(prior):
        return False
    bias = head.bias.detach().float().cpu()
    target = prior.log()
    return torch.allclose(bias - bias.mean(), target - target.mean(), atol=1e-2)


def expected_init_loss(model: nn.Module, train_labels: torch.Tensor,
                       num_classes: int) -> tuple[float, str]:
    """-log(1/C) for a neutral head; the entropy of the class prior when the bias is log prior."""
    prior = class_prior(train_labels, num_classes)
    if head_bias_is_prior(model, prior):
        entropy = -(prior * prior.log()).sum().item()
        return entropy, "entropy of the class prior (head bias = log prior)"
    return math.log(num_classes), f"-log(1/{num_classes})"


@timed_check("loss_at_init")
def check_loss_at_init(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    expected: float,
    why: str = "",
    loss_fn: Callable = F.cross_entropy,
    warn_excess: float = 0.15,
    fail_excess: float = 0.5,
    slack: float = 0.05,
) -> CheckResult:
    """Mean loss of the untrained model in eval mode over `batches`, against `expected`.

    FAIL when it exceeds expected by more than fail_excess (relative) + slack (nats): the
    outputs are confidently wrong before any training (over-scaled init, broken loss).
    """
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    try:
        with torch.no_grad():
            for x, y in batches:
                total += loss_fn(model(x).float(), y).item() * len(x)
                n += len(x)
    finally:
        model.train(was_training)
    loss = total / max(1, n)
    measured = f"{loss:.3f} on {n} samples"
    expect = f"{expected:.3f} = {why}" if why else f"{expected:.3f}"
    if not math.isfinite(loss):
        return CheckResult("loss_at_init", FAIL, measured, expect,
                           "the loss is NaN/Inf before training: see gradient_flow for the "
                           "module that makes it")
    excess = loss - expected
    if excess > fail_excess * expected + slack:
        return CheckResult("loss_at_init", FAIL, measured, expect,
                           f"the untrained model is confidently wrong ({excess:+.2f} nats): "
                           f"scale down the head init, or check the loss gets raw logits")
    if excess > warn_excess * expected + slack:
        return CheckResult("loss_at_init", WARN, measured, expect,
                           "a little above chance: the initial logits are larger than needed")
    if loss < 0.5 * expected - slack:
        return CheckResult("loss_at_init", WARN, measured, expect,
                           "well below chance before training: pretrained weights, or the "
                           "labels leak into the inputs?")
    return CheckResult("loss_at_init", PASS, measured, expect, "")


@timed_check("init_well")
def check_init_well(model: nn.Module, train_labels: torch.Tensor, num_classes: int,
                    requested: bool = True) -> CheckResult:
    """Report whether the head bias holds the log class prior ("init well")."""
    prior = class_prior(train_labels, num_classes)
    entropy = -(prior * prior.clamp_min(1e-12).log()).sum().item()
    imbalance = (prior.max() / prior.clamp_min(1e-12).min()).item()
    measured = f"prior entropy {entropy:.3f} vs log C {math.log(num_classes):.3f}"
    if head_bias_is_prior(model, prior):
        return CheckResult("init_well", PASS, "head bias = log prior; " + measured,
                           "head bias = log prior", "")
    if requested:
        return CheckResult("init_well", WARN, "head bias not set; " + measured,
                           "head bias = log prior",
                           "init.head_bias=prior found no final Linear with num_classes "
                           "outputs: set the head's bias to log(class frequencies) yourself")
    status = WARN if imbalance > 3 else PASS
    return CheckResult("init_well", status, "head bias not set (init.head_bias=zero); " + measured,
                       "head bias = log prior when classes are imbalanced",
                       f"classes are imbalanced {imbalance:.1f}x: init.head_bias=prior saves "
                       f"the first steps" if status == WARN else "")


# --- any task (nnrecipe.tasks): the task says what the best constant output is -----------------


def head_at_constant(model: nn.Module, task, train_targets: torch.Tensor, num_outputs: int,
                     rtol: float = 1e-2) -> bool:
    """True when the head's bias scores like the task's best constant output (its loss on the
    training targets within rtol): shifts a loss ignores (softmax) do not matter."""
    head = classifier_head(model)
    if head is None or head.bias is None or head.bias.numel() != num_outputs:
        return False
    y = train_targets.cpu()
    at_bias = float(task.plain_loss(head.bias.detach().float().cpu().expand(len(y), -1), y))
    best, _ = task.expected_init_loss(y, num_outputs, head_at_constant=True)
    return abs(at_bias - best) <= rtol * abs(best) + 1e-4


def expected_init_loss_task(model: nn.Module, task, train_targets: torch.Tensor,
                            num_outputs: int) -> tuple[float, str]:
    """The task's loss of its best constant output when the head's bias holds it, else of
    all-zero outputs (a neutral head)."""
    return task.expected_init_loss(train_targets.cpu(), num_outputs,
                                   head_at_constant(model, task, train_targets, num_outputs))


@timed_check("init_well")
def check_init_well_task(model: nn.Module, task, train_targets: torch.Tensor, num_outputs: int,
                         requested: bool = True) -> CheckResult:
    """Report whether the head bias holds the task's best constant output ("init well")."""
    y = train_targets.cpu()
    best, _ = task.expected_init_loss(y, num_outputs, head_at_constant=True)
    zero, _ = task.expected_init_loss(y, num_outputs, head_at_constant=False)
    measured = f"loss of the constant {best:.3f} vs of zero outputs {zero:.3f}"
    expected = f"head bias = the best constant output ({task.name})"
    if head_at_constant(model, task, y, num_outputs):
        return CheckResult("init_well", PASS, "head bias at the constant; " + measured,
                           expected, "")
    if requested:
        return CheckResult("init_well", WARN, "head bias not set; " + measured, expected,
                           f"init.head_bias=prior found no final Linear with {num_outputs} "
                           f"outputs: set the head's bias to task.constant_output() yourself")
    costly = zero > 1.5 * best + 0.05
    return CheckResult("init_well", WARN if costly else PASS,
                       "head bias not set (init.head_bias=zero); " + measured, expected,
                       "zero outputs cost far more than the constant: init.head_bias=prior "
                       "saves the first steps" if costly else "")
