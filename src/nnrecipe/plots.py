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
