"""Checks on what reaches the net: the batch itself, leakage between splits, output shape."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from nnrecipe.checks.report import FAIL, PASS, WARN, CheckResult, timed_check, worst


@timed_check("data_batch")
def check_data_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    in_chans: int | None = None,
    mean_warn: float = 1.0,
    mean_fail: float = 3.0,
    std_warn: tuple[float, float] = (0.5, 2.0),
    std_fail: tuple[float, float] = (0.25, 4.0),
    picture: Path | None = None,
    denormalize: Callable | None = None,
    class_names: list[str] | None = None,
    others: dict[str, torch.Tensor] | None = None,
    train_labels: torch.Tensor | None = None,
    classes: bool = True,
    reference: torch.Tensor | None = None,
) -> CheckResult:
    """The exact tensor the model receives: dtype, shape, finite, normalised, labels valid.

    `others`: inputs of other splits ({"val": x}), which must look like the training inputs
    (same preprocessing). `train_labels`: the whole training split's labels, every class in
    them. `classes`: False for targets that are not class indices (regression values,
    multi-label 0/1 rows): they must only be finite. `reference`: training inputs the other
    splits are compared with (default: the batch; a tabular batch holds one value per feature
    and sample, too few to compare spreads with). Optionally saves `picture`: the batch as
    an image grid (de-normalised) with labels.
    """
    problems: list[tuple[str, str]] = []  # (status, what is wrong and what to try)
    if not x.is_floating_point():
        problems.append((FAIL, f"inputs are {x.dtype}, not float: convert and scale them "
                               f"(e.g. ToDtype(float32, scale=True)) before normalising"))
    if x.ndim != 4:
        problems.append((WARN, f"inputs have {x.ndim} dims {list(x.shape)}, not [B, C, H, W]"))
    elif in_chans is not None and x.shape[1] != in_chans:
        problems.append((FAIL, f"inputs have {x.shape[1]} channels but the model expects "
                               f"{in_chans}: set model.in_chans / data.in_chans to agree"))
    xf = x.detach().float()
    finite = torch.isfinite(xf)
    if not finite.all():
        problems.append((FAIL, f"{int((~finite).sum())} input values are NaN/Inf: look for a "
                               f"division by zero or a log of <= 0 in the data pipeline"))
        xf = torch.where(finite, xf, torch.zeros_like(xf))
    dims = [d for d in range(xf.ndim) if d != 1] if xf.ndim >= 2 else [0]
    # a table's batch holds one value per feature and sample: judge the scaling on `reference`
    stats = xf if reference is None else reference.detach().float().nan_to_num()
    mean, std = stats.mean(dims), stats.std(dims) if stats.numel() > 1 else torch.ones(1)
    mean, std = mean.flatten().tolist(), std.flatten().tolist()
    worst_mean, lo, hi = max(abs(m) for m in mean), min(std), max(std)
    if worst_mean > mean_fail or lo < std_fail[0] or hi > std_fail[1]:
        problems.append((FAIL, f"inputs are clearly not normalised (per channel mean "
                               f"{_fmt(mean)}, std {_fmt(std)}): normalise with the data's own "
                               f"per-channel mean/std (data.mean/std null computes them)"))
    elif worst_mean > mean_warn or lo < std_warn[0] or hi > std_warn[1]:
        problems.append((WARN, f"inputs look poorly normalised (mean {_fmt(mean)}, std "
                               f"{_fmt(std)}): check data.mean/std"))
    for split, other in (others or {}).items():
        problems += _compare_splits(split, stats, other, tabular=reference is not None)
    if not classes:
        train_labels = None
        if not torch.isfinite(y.float()).all():
            problems.append((FAIL, "targets hold NaN/Inf: drop or fill those rows"))
    if train_labels is not None:
        counts = torch.bincount(train_labels.cpu().long().clamp(0, num_classes - 1),
                                minlength=num_classes)
        missing = (counts == 0).nonzero().flatten().tolist()
        if missing:
            problems.append((FAIL if len(missing) == num_classes - 1 else WARN,
                             f"classes {missing[:10]} never occur in the training labels "
                             f"({num_classes - len(missing)}/{num_classes} present)"))
    labels = _hard_labels(y, problems) if classes else None
    present = 0
    if labels is not None:
        bad = (labels < 0) | (labels >= num_classes)
        if bad.any():
            problems.append((FAIL, f"labels {labels[bad][:5].tolist()} lie outside "
                                   f"[0, {num_classes}): labels must be 0..num_classes-1"))
        present = len(labels[~bad].unique())
        if num_classes > 1 and present == 1 and len(labels) >= 2 * num_classes:
            problems.append((WARN, f"the whole batch of {len(labels)} holds one class: "
                                   f"is the data sorted by class and not shuffled?"))
    if picture is not None and x.ndim == 4 and x.shape[1] in (1, 3):
        from nnrecipe.plots import image_grid

        shown = xf[:32]
        shown = denormalize(shown) if denormalize else (shown - shown.min()) / (
            shown.max() - shown.min() + 1e-8)
        names = class_names or [str(c) for c in range(num_classes)]
        titles = None if labels is None else [
            names[c] if 0 <= c < len(names) else f"?{c}" for c in labels[:32].tolist()]
        picture = image_grid(shown, picture, captions=titles,
                             title=f"the first training batch, as the model gets it "
                                   f"(de-normalised for viewing), {list(x.shape)}")
    status = worst(*(s for s, _ in problems)) if problems else PASS
    return CheckResult(
        "data_batch", status,
        f"{str(x.dtype).replace('torch.', '')} {list(x.shape)}, mean {_fmt(mean)}, "
        f"std {_fmt(std)}, " + (f"{present}/{num_classes} classes" if classes else
                                f"{num_classes} target column(s)"),
        f"float [B, {in_chans or 'C'}, H, W], finite, |mean| <= {mean_warn:g}, "
        f"std {std_warn[0]:g}-{std_warn[1]:g}, "
        + (f"labels in [0, {num_classes})" if classes else "finite targets"),
        "; ".join(m for _, m in problems) or "the batch looks like normalised images with "
                                             "valid labels: look at batch.png anyway",
        pictures=[picture] if picture is not None else [],
    )


def _compare_splits(name: str, x: torch.Tensor, other: torch.Tensor,
                    tabular: bool = False) -> list:
    """Other splits must be preprocessed like training (same normalisation, same scale).
    `tabular`: columns with two values (one-hot, yes/no) are left out of the spread ratio: in
    a small split a rare category's spread is the luck of its count, not a scaling."""
    if other.ndim != x.ndim or other.shape[1:] != x.shape[1:]:
        return [(FAIL, f"{name} inputs have shape {list(other.shape[1:])}, training inputs "
                       f"{list(x.shape[1:])}")]
    dims = [d for d in range(x.ndim) if d != 1]
    o = other.detach().float().nan_to_num()
    shift = (o.mean(dims) - x.mean(dims)).abs().max().item()
    ratio = (o.std(dims) / x.std(dims).clamp_min(1e-8)).flatten()
    if tabular:
        ratio = ratio[[len(x[:, c].unique()) > 2 for c in range(x.shape[1])]]
    ratio = ratio.tolist() or [1.0]
    if shift > 0.75 or min(ratio) < 0.5 or max(ratio) > 2:
        return [(FAIL, f"{name} inputs are scaled differently from training inputs (mean "
                       f"shift {shift:.2f}, std ratio {_fmt(ratio)}): apply the same "
                       f"transform/normalisation to every split")]
    return []


def _hard_labels(y: torch.Tensor, problems: list) -> torch.Tensor | None:
    """Class indices from hard labels or soft targets (mixup); None when unusable."""
    if y.ndim == 2 and y.is_floating_point():  # soft targets: rows must be distributions
        if not torch.allclose(y.sum(1), torch.ones_like(y[:, 0]), atol=1e-3):
            problems.append((FAIL, "soft targets do not sum to 1 per sample"))
        return y.argmax(1).cpu()
    if y.is_floating_point() or y.dtype == torch.bool:
        problems.append((FAIL, f"labels are {y.dtype}: cross-entropy wants int64 class "
                               f"indices (y.long())"))
        return None
    if y.ndim != 1:
        problems.append((FAIL, f"labels have shape {list(y.shape)}, expected [B]"))
        return None
    return y.cpu()


def _fmt(values: list[float]) -> str:
    shown = ", ".join(f"{v:.2f}" for v in values[:3])
    return f"[{shown}{', …' if len(values) > 3 else ''}]"


def content_hashes(split) -> list:
    """One hash per sample of its exact content: tensor bytes in memory, encoded bytes otherwise
    (read on all cores: at 100k files one thread spent most of the preflight here)."""
    if hasattr(split, "x"):
        rows = split.x.detach().cpu().contiguous().flatten(1).numpy()
        return [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows]
    from concurrent.futures import ThreadPoolExecutor

    from nnrecipe import runtime

    def digests(start: int) -> list[bytes]:
        chunk = split.read(range(start, min(start + 256, len(split))))
        return [hashlib.blake2b(data, digest_size=16).digest() for data in chunk]

    with ThreadPoolExecutor(max(1, runtime.cores())) as pool:  # reads and blake2b free the GIL
        return [h for part in pool.map(digests, range(0, len(split), 256)) for h in part]


def split_hashes(splits: dict) -> tuple[dict, str]:
    """{split: hashes} and where they came from: the hashes a split carries (a file index's,
    computed when it was built: no file is read again) when every split has them, else
    content_hashes()."""
    stored = {name: getattr(split, "hashes", None) for name, split in splits.items()}
    if all(h is not None and len(h) == len(splits[n]) for n, h in stored.items()):
        return {name: list(h) for name, h in stored.items()}, "the index's hashes"
    return {name: content_hashes(split) for name, split in splits.items()}, "content hashes"


@timed_check("leakage")
def check_leakage(splits: dict, fail_fraction: float = 0.01) -> CheckResult:
    """Exact duplicate inputs across train/val/test, by content hash.

    `splits`: {"train": split, "val": split, "test": split}, each a TensorSplit/FileSplit or
    anything with `.x` [N, ...]; a split's own `.hashes` (one per sample) are used when every
    split has them. Leaks inflate val/test scores: the model is graded on
    samples it trained on.
    """
    hashes, source = split_hashes(splits)
    seen = {name: set(h) for name, h in hashes.items()}
    names = list(hashes)
    counts, status, worst_fraction = {}, PASS, 0.0
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            n = sum(h in seen[a] for h in hashes[b])  # samples of b already in a
            counts[f"{b}∩{a}"] = n
            fraction = n / max(1, len(hashes[b]))
            worst_fraction = max(worst_fraction, fraction)
            if n:
                status = worst(status, FAIL if fraction > fail_fraction else WARN)
    within = sum(len(h) - len(seen[n]) for n, h in hashes.items())
    measured = ", ".join(f"{k}: {v}" for k, v in counts.items())
    if status == PASS:
        message = "no sample appears in two splits"
    else:
        message = (f"{sum(counts.values())} samples appear in two splits (worst "
                   f"{worst_fraction:.1%} of a split): val/test scores are inflated; "
                   f"de-duplicate before splitting")
    if within:
        message += f"; {within} exact duplicates inside splits"
    return CheckResult("leakage", status, f"{measured} (by {source})",
                       f"0 shared samples (FAIL above {fail_fraction:.0%} of a split)", message)


@timed_check("output_shape")
def check_output_shape(model: nn.Module, x: torch.Tensor, num_classes: int,
                       task=None) -> CheckResult:
    """The model returns logits [B, num_classes] (run in eval mode, on a copy-free no_grad pass);
    with a `task` (nnrecipe.tasks), what its output contract says."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        model.train(was_training)
    expected = f"[{len(x)}, {num_classes}] float logits"
    if task is not None and task.targets != "classes":
        problem = task.output_problem(out, len(x), num_classes)
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return CheckResult("output_shape", FAIL if problem else PASS, str(shape),
                           f"[{len(x)}, {num_classes}] float outputs", problem or "")
    if not isinstance(out, torch.Tensor):
        return CheckResult("output_shape", FAIL, type(out).__name__, expected,
                           "the model must return one tensor of logits (not a tuple/dict)")
    shape = list(out.shape)
    if out.ndim != 2 or shape[0] != len(x) or shape[1] != num_classes:
        hint = ("the head is built with the wrong number of classes: use num_classes"
                if out.ndim == 2 and shape[0] == len(x) else
                "flatten/pool to [B, features] before the head, keep the batch dim first")
        return CheckResult("output_shape", FAIL, str(shape), expected, hint)
    if not out.is_floating_point():
        return CheckResult("output_shape", FAIL, f"{shape} {out.dtype}", expected,
                           "logits must be floating point (no argmax inside the model)")
    return CheckResult("output_shape", PASS, str(shape), expected, "")


def model_in_chans(model: nn.Module) -> int | None:
    """Input channels of the model's first 2-D convolution, None when it has none."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else conv.in_channels
