"""Pictures shared by the checks, the audit and the sweep comparison (matplotlib, Agg)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works on servers without a display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def image_grid(
    images: torch.Tensor,
    path: Path,
    titles: list[str] | None = None,
    title: str | None = None,
    ncols: int = 8,
) -> Path:
    """Save images [N, C, H, W] with pixel values in [0, 1] as one grid PNG, a title per image."""
    images = images.detach().float().cpu().clamp(0, 1)
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.4 * ncols, 1.6 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(img[:3].permute(1, 2, 0), interpolation="nearest")
        if titles:
            ax.set_title(titles[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, path)


def bar_chart(counts: dict[str, int], path: Path, title: str = "", ylabel: str = "count") -> Path:
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(counts) + 2), 3))
    ax.bar([str(k) for k in counts], list(counts.values()))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=90 if len(counts) > 12 else 0)
    return save(fig, path)


def save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scatter_panels(
    panels: dict[str, tuple[list, list[float]]], path: Path, ylabel: str, title: str = ""
) -> Path:
    """One scatter panel per name: y against x, where x is numbers or category names.

    Numbers spanning more than a decade (all positive) get a log axis, as learning rates need
    (and losses, when one diverging trial would squash all the others against zero).
    """
    ncols = min(3, max(1, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (name, (xs, ys)) in zip(axes.flat, panels.items(), strict=False):
        if all(isinstance(x, (int, float)) for x in xs):
            ax.scatter(xs, ys, alpha=0.8)
            if _spans_decades(xs):
                ax.set_xscale("log")
        else:
            categories = sorted({str(x) for x in xs})
            ax.scatter([categories.index(str(x)) for x in xs], ys, alpha=0.8)
            ax.set_xticks(range(len(categories)), categories)
        ax.set_xlabel(name)
        ax.set_ylabel(ylabel)
        if _spans_decades(ys):
            ax.set_yscale("log")
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
