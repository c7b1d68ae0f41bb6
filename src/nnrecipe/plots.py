"""Pictures shared by the checks, the audit and the sweep comparison (matplotlib, Agg)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # a notebook keeps its own backend (figures are closed)
    matplotlib.use("Agg")  # files only: works on servers without a display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scatter_panels(
    panels: dict[str, tuple[list, list[float]]], path: Path, ylabel: str, title: str = "",
    log_x: set[str] = frozenset(), failed: dict[str, list] | None = None,
) -> Path:
    """One scatter panel per name: y against x, where x is numbers or category names.

    The names in `log_x` (keys sampled log-uniformly, like learning rates) and numbers spanning
    more than a decade (all positive) get a log axis (and so do losses, when one diverging trial
    would squash all the others against zero). `failed`: per name, the x of trials without a y
    (failed), drawn as red crosses along the top so that where trials fail shows too.
    """
    from matplotlib.ticker import LogLocator, NullFormatter

    failed = failed or {}
    ncols = min(3, max(1, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for i, (ax, (name, (xs, ys))) in enumerate(zip(axes.flat, panels.items(), strict=False)):
        bad = failed.get(name, [])
        if all(isinstance(x, (int, float)) for x in [*xs, *bad]):
            ax.scatter(xs, ys, alpha=0.8)
            if name in log_x or _spans_decades([*xs, *bad]):
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap
        else:
            categories = sorted({str(x) for x in [*xs, *bad]})
            ax.scatter([categories.index(str(x)) for x in xs], ys, alpha=0.8)
            ax.set_xticks(range(len(categories)), categories)
            bad = [categories.index(str(x)) for x in bad]
        if _spans_decades(ys):
            ax.set_yscale("log")
        if bad:
            ax.scatter(bad, [ax.get_ylim()[1]] * len(bad), marker="x", color="tab:red",
                       clip_on=False, label="failed")
            if i == 0:
                ax.legend(fontsize=7, loc="lower right")
        ax.set_xlabel(name)
        ax.set_ylabel(ylabel)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path)


def _spans_decades(values) -> bool:
    return len(values) > 1 and min(values) > 0 and max(values) / min(values) > 10


def learning_curves(
    histories: dict[str, list[dict]], path: Path, metrics: tuple[str, ...] = ("val/loss", "val/acc")
) -> Path:
    """One panel per metric, one line per run: the metric after each epoch."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=True):
        for label, history in histories.items():
            points = [(h["epoch"], h[metric]) for h in history if metric in h]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
    axes.flat[0].legend(fontsize=7)
    return save(fig, path)


def grouped_bar_chart(groups: dict[str, dict[str, int]], path: Path, title: str = "",
                      ylabel: str = "count") -> Path:
    """One bar per key and group, side by side (e.g. class counts of train, val and test)."""
    keys = list(dict.fromkeys(k for counts in groups.values() for k in counts))
    width = 0.8 / max(1, len(groups))
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(keys) + 2), 3))
    for g, (name, counts) in enumerate(groups.items()):
        xs = [i + (g - (len(groups) - 1) / 2) * width for i in range(len(keys))]
        ax.bar(xs, [counts.get(k, 0) for k in keys], width=width, label=name)
    ax.set_xticks(range(len(keys)), [str(k) for k in keys],
                  rotation=90 if len(keys) > 12 else 0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return save(fig, path)


def confusion_matrix(matrix, class_names: list[str], path: Path, title: str = "") -> Path:
    """Counts of (true row, predicted column), each cell annotated when there are few classes."""
    import numpy as np

    m = np.asarray(matrix)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(max(3.5, 0.4 * n + 1.5), max(3, 0.4 * n + 1)))
    ax.imshow(m, cmap="Blues")
    ticks = range(n) if n <= 30 else []
    ax.set_xticks(ticks, [class_names[i] for i in ticks], rotation=90, fontsize=7)
    ax.set_yticks(ticks, [class_names[i] for i in ticks], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 15:
        for (r, c), v in np.ndenumerate(m):
            ax.text(c, r, str(v), ha="center", va="center", fontsize=6,
                    color="white" if v > m.max() / 2 else "black")
    ax.set_title(title)
    return save(fig, path)


def image_grid(
    images: torch.Tensor,
    path: Path,
    captions: list[str] | None = None,
    title: str | None = None,
    ncols: int = 8,
) -> Path:
    """Save images [N, C, H, W] in [0, 1] as one grid PNG, a caption under each tile.

    The tiles are pasted into ONE array drawn once: a subplot per image costs tens of ms each,
    which made a 32-image grid take ~1.5 s (the preflight's batch.png)."""
    import numpy as np

    images = images.detach().float().cpu().clamp(0, 1)
    n, _, h, w = images.shape if len(images) else (0, 1, 8, 8)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    cell_in = 1.4  # inches per tile
    lines = max((caption.count("\n") + 1 for caption in captions or []), default=0)
    pad = max(1, round(w * 0.06))
    band = math.ceil(lines * 0.12 / cell_in * w)  # caption height in tile pixels (~7pt a line)
    row_h, col_w = h + band + pad, w + pad
    canvas = np.ones((nrows * row_h + pad, ncols * col_w + pad, 3))
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        tile = img[:3].expand(3, -1, -1).permute(1, 2, 0).numpy()
        canvas[pad + r * row_h : pad + r * row_h + h, pad + c * col_w : pad + c * col_w + w] = tile
    top = 0.35 if title else 0.0
    width_in = cell_in * ncols
    height_in = width_in * canvas.shape[0] / canvas.shape[1]
    fig = plt.figure(figsize=(width_in, height_in + top))
    ax = fig.add_axes((0, 0, 1, height_in / (height_in + top)))
    ax.imshow(canvas, interpolation="nearest", aspect="auto")
    ax.axis("off")
    for i, caption in enumerate(captions or []):
        r, c = divmod(i, ncols)
        ax.text(pad + c * col_w + w / 2, pad + r * row_h + h, caption, ha="center", va="top",
                fontsize=7, linespacing=1.0)
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.1 * top / (height_in + top))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def probability_lines(
    probs: torch.Tensor,
    steps: list[int],
    highlight: list[int],
    path: Path,
    titles: list[str] | None = None,
    title: str | None = None,
    ncols: int = 4,
) -> Path:
    """probs [N, T, C]: one panel per sample, one line per class over the T steps; the
    `highlight` class of each sample in thick green, the others thin grey."""
    n = len(probs)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.4 * ncols, 1.8 * nrows), squeeze=False,
                             sharex=True, sharey=True)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        for c in range(probs.shape[-1]):
            if c != highlight[i]:
                ax.plot(steps, probs[i, :, c], color="0.6", lw=0.8)
        ax.plot(steps, probs[i, :, highlight[i]], color="tab:green", lw=2.2)
        ax.set_ylim(-0.02, 1.02)
        ax.tick_params(labelsize=6)
        if titles:
            ax.set_title(titles[i], fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, path)
