"""Backprop charts the dependencies: batch independence, gradient flow, eval determinism."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nnrecipe.checks.report import FAIL, PASS, WARN, CheckResult, timed_check


def norm_layers_eval(model: nn.Module) -> nn.Module:
    """Put normalisation layers in eval mode: BatchNorm's batch statistics mix samples by design."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            m.eval()
    return model


@timed_check("batch_independence")
def check_batch_independence(model: nn.Module, x: torch.Tensor, probes: int = 3,
                             tol: float = 1e-6) -> CheckResult:
    """d(output of sample i)/d(input): zero for every other sample, non-zero for sample i.

    Runs on a copy in train mode with normalisation layers in eval mode. The output is
    projected on a random vector (a plain sum would vanish behind a softmax).
    """
    name, expected = "batch_independence", "grad only on sample i, for each probed i"
    if len(x) < 2:
        return CheckResult(name, WARN, f"batch of {len(x)}", expected, "needs >= 2 samples")
    if not x.is_floating_point():
        return CheckResult(name, WARN, f"{x.dtype} inputs", expected,
                           "cannot differentiate w.r.t. integer inputs: skipped")
    net = norm_layers_eval(copy.deepcopy(model).train())
    x = x.detach().clone().requires_grad_(True)
    out = net(x)
    if not (isinstance(out, torch.Tensor) and out.requires_grad):
        return CheckResult(name, FAIL, "output has no gradient w.r.t. the input", expected,
                           "the output is cut off from the input (torch.no_grad / .detach() / "
                           ".data in forward?)")
    project = torch.randn(out[0].shape, device=out.device, dtype=out.dtype)
    indices = sorted({0, len(x) // 2, len(x) - 1})[:max(1, probes)]
    mixed, blind = [], []
    for i in indices:
        (grad,) = torch.autograd.grad((out[i] * project).sum(), x, retain_graph=True,
                                      allow_unused=True)
        grad = torch.zeros_like(x) if grad is None else grad
        if not bool(torch.isfinite(grad).all()):
            return CheckResult(name, FAIL, f"NaN/Inf gradient w.r.t. the input (probe {i})",
                               expected, "the dependencies cannot be charted through NaN: "
                               "see gradient_flow for where it starts")
        per_sample = grad.detach().abs().flatten(1).amax(1)
        own = per_sample[i].item()
        others = torch.cat([per_sample[:i], per_sample[i + 1:]]).max().item()
        if not own > 0:
            blind.append(i)
        if others > tol * max(own, 1e-12) and others > 0:
            mixed.append((i, int((per_sample > 0).sum()) - (own > 0)))
    measured = (f"{len(mixed)}/{len(indices)} probes mix samples, "
                f"{len(blind)}/{len(indices)} blind to own input")
    if mixed:
        i, k = mixed[0]
        return CheckResult(name, FAIL, measured, expected,
                           f"the output of sample {i} depends on {k} other samples: a "
                           f"reshape/view mixes the batch dim (view where permute was meant? "
                           f"batch_first?) or a layer pools over the batch")
    if blind:
        return CheckResult(name, FAIL, measured, expected,
                           f"the output of sample {blind[0]} does not depend on its own input: "
                           f"the input is detached, zeroed or never used")
    return CheckResult(name, PASS, measured, expected, "")


def _finite(t) -> bool:
    tensors = [t] if isinstance(t, torch.Tensor) else (
        [v for v in t if isinstance(v, torch.Tensor)] if isinstance(t, (tuple, list)) else [])
    return all(bool(torch.isfinite(v).all()) for v in tensors if v.is_floating_point())


def locate_nonfinite(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     loss_fn: Callable = F.cross_entropy) -> str:
    """Name where NaN/Inf first appears: forward (module in or out), the loss, or backward."""
    events: list[str] = []
    handles = []
    names = {m: n or type(model).__name__ for n, m in model.named_modules()}

    def pre_hook(m, args):
        if not events and not _finite(args):
            events.append(f"forward: NaN/Inf enters `{names[m]}` ({type(m).__name__}), made "
                          f"by code just before it (in its parent's forward)")

    def hook(m, args, out):
        if not events and _finite(args) and not _finite(out):
            events.append(f"forward: `{names[m]}` ({type(m).__name__}) turns finite inputs "
                          f"into NaN/Inf")
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(lambda g, m=m: _backward_event(g, m))

    def _backward_event(grad, m):
        if not events and not bool(torch.isfinite(grad).all()):
            events.append(f"backward: the gradient at the output of `{names[m]}` "
                          f"({type(m).__name__}) is NaN/Inf: the op after it has an "
                          f"infinite derivative (sqrt/log/div near 0)")

    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre_hook))
        handles.append(m.register_forward_hook(hook))
    try:
        loss = loss_fn(model(x), y)
        if not events and not math.isfinite(loss.item()):
            events.append("the loss turns finite outputs into NaN/Inf: check the loss gets "
                          "logits and valid targets")
        if loss.requires_grad:
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    return events[0] if events else ""


@timed_check("gradient_flow")
def check_gradient_flow(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        loss_fn: Callable = F.cross_entropy,
                        make_optimizer: Callable | None = None,
                        recheck_steps: int = 3) -> CheckResult:
    """After backward, every trainable parameter has a finite, non-zero gradient.

    Parameters with an all-zero gradient are re-checked after `recheck_steps` optimizer steps
    on a copy: zero-initialised gates (e.g. timm's last BatchNorm of a block) open after one.
    """
    name, expected = "gradient_flow", "every trainable parameter: finite, non-zero gradient"
    net = copy.deepcopy(model).train()
    params = dict(net.named_parameters())
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    frozen = [n for n, p in params.items() if not p.requires_grad]
    loss = loss_fn(net(x), y)
    if not loss.requires_grad:
        return CheckResult(name, FAIL, "the loss has no gradient", expected,
                           "no parameter reaches the loss: the forward runs under "
                           "torch.no_grad or detaches its output")
    if not math.isfinite(loss.item()):
        where = locate_nonfinite(copy.deepcopy(model).train(), x, y, loss_fn)
        return CheckResult(name, FAIL, f"loss {loss.item()}", expected, where or "NaN loss")
    loss.backward()
    none = [n for n, p in trainable.items() if p.grad is None]
    nonfinite = [n for n, p in trainable.items()
                 if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    if nonfinite:
        where = locate_nonfinite(copy.deepcopy(model).train(), x, y, loss_fn)
        return CheckResult(name, FAIL, f"{len(nonfinite)} NaN/Inf gradients ({nonfinite[0]})",
                           expected, where or "non-finite gradients")
    zero = [n for n, p in trainable.items() if p.grad is not None and not p.grad.any()]
    if zero and make_optimizer is not None and recheck_steps > 0:
        zero = _still_zero(net, zero, x, y, loss_fn, make_optimizer, recheck_steps)
    measured = (f"{len(trainable) - len(none) - len(zero)}/{len(trainable)} get gradients; "
                f"none: {len(none)}, zero: {len(zero)}, frozen: {len(frozen)}")
    if none:
        return CheckResult(name, FAIL, measured, expected,
                           f"no gradient reaches {_names(none)}: unused in forward, or run "
                           f"under torch.no_grad / .detach()")
    if zero:
        return CheckResult(name, FAIL, measured, expected,
                           f"all-zero gradient for {_names(zero)}: dead units (ReLU always "
                           f"off), a zero multiplier, or a path cut by an integer op")
    if frozen:
        return CheckResult(name, WARN, measured, expected,
                           f"requires_grad=False on {_names(frozen)}: frozen on purpose?")
    return CheckResult(name, PASS, measured, expected, "")


def _still_zero(net, zero, x, y, loss_fn, make_optimizer, steps) -> list[str]:
    optimizer = make_optimizer(net)
    params = dict(net.named_parameters())
    for _ in range(steps):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        zero = [n for n in zero if params[n].grad is not None and not params[n].grad.any()]
        if not zero:
            break
    return zero


def _names(names: list[str], n: int = 4) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


@timed_check("eval_determinism")
def check_eval_determinism(model: nn.Module, x: torch.Tensor, rtol: float = 1e-5,
                           atol: float = 1e-6) -> CheckResult:
    """Two evaluation passes on the same batch give the same outputs (on a copy)."""
    net = copy.deepcopy(model).eval()
    original = x.clone()
    with torch.no_grad():
        a, b = net(x).float(), net(x).float()
    diff = (a - b).abs().nan_to_num(math.inf).max().item()
    measured, expected = f"max |Δ| = {diff:.2e}", f"identical (<= {atol:g} + {rtol:g}·|out|)"
    if not torch.equal(x, original):
        x.copy_(original)  # the batch may be a view of the dataset: put it back
        return CheckResult("eval_determinism", FAIL, measured + "; input changed", expected,
                           "forward modifies its input in place (x.relu_(), x += ...): it "
                           "corrupts the data it is given; use out-of-place ops on the input")
    if not torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
        return CheckResult("eval_determinism", FAIL, measured, expected,
                           "eval outputs are random: dropout/noise still on in eval mode "
                           "(F.dropout(..., training=True)? use self.training)")
    return CheckResult("eval_determinism", PASS, measured, expected, "")
