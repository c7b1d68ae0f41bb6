"""Outliers: images whose statistics or embedding sit far from the rest.

Scores are robust z-scores, |x - median| / (1.4826 * MAD): a few extreme images cannot hide
themselves by inflating the spread, as they would with mean and std. An image's score is its
largest z over its pixel statistics (per channel: brightness, contrast, texture) and the
distance to its k-th nearest neighbour in the embedding (an image unlike any other). Min and
max are left out: nearly constant across images, they make tiny differences look extreme.
"""

from __future__ import annotations

import numpy as np
import torch

from nnrecipe.audit.pool import Pool


def robust_z(values: np.ndarray) -> np.ndarray:
    """Signed robust z-score of each row, per column.

    The scale is the MAD, or the mean absolute deviation where that is larger: a feature that
    is nearly always the same value (the max pixel of a digit) has a MAD of 0, and the smallest
    difference would otherwise score as extreme. Both equal the std for Gaussian data.
    """
    values = np.asarray(values, dtype=np.float64)
    median = np.median(values, axis=0)
    deviation = np.abs(values - median)
    scale = np.maximum(1.4826 * np.median(deviation, axis=0), 1.2533 * deviation.mean(axis=0))
    return (values - median) / np.maximum(scale, 1e-9)


def pool_stats(pool: Pool, block: int = 4096) -> np.ndarray:
    """image_stats of the whole pool, block by block (the thumbnails stay uint8)."""
    if not len(pool):
        return np.zeros((0, 3 * pool.thumbs.shape[1]))
    if pool.thumbs.dtype == torch.uint8:
        return np.concatenate([_uint8_stats(pool.thumbs[s:s + block])
                               for s in range(0, len(pool), block)])
    return np.concatenate([image_stats(images) for _, images in pool.blocks(block)])


def _uint8_stats(x8: torch.Tensor) -> np.ndarray:
    """image_stats of uint8 pixels, in integers where it can (no NaN to clean, no float copy
    for the differences): 1.6x faster, equal to 1e-7."""
    x = x8.to(torch.int16)
    h, w = x.shape[-2:]
    vertical = (x[..., 1:, :] - x[..., :-1, :]).abs_().sum((2, 3), dtype=torch.float32)
    horizontal = (x[..., 1:] - x[..., :-1]).abs_().sum((2, 3), dtype=torch.float32)
    texture = (vertical / max(1, w * (h - 1)) + horizontal / max(1, h * (w - 1))) / 2
    var, mean = torch.var_mean(x8.flatten(2).float(), 2)
    return (torch.cat([mean, var.sqrt(), texture], 1) / 255).numpy()


def image_stats(thumbs: torch.Tensor) -> np.ndarray:
    """Per image and channel: mean (brightness), std (contrast), and the mean difference between
    neighbouring pixels (texture: high for noise, low for blur)."""
    x = thumbs.nan_to_num(0.0, 0.0, 0.0)
    texture = ((x[..., 1:, :] - x[..., :-1, :]).abs().mean((2, 3))
               + (x[..., 1:] - x[..., :-1]).abs().mean((2, 3))) / 2
    flat = x.flatten(2)
    return torch.cat([flat.mean(2), flat.std(2), texture], dim=1).numpy()


def outlier_scores(pool: Pool, knn_dist: torch.Tensor) -> np.ndarray:
    stats = np.abs(robust_z(pool_stats(pool))).max(1)
    isolation = robust_z(knn_dist[:, -1].numpy()[:, None])[:, 0]  # far only: near is no outlier
    return np.maximum(stats, isolation)


def outliers(pool: Pool, scores: np.ndarray, min_score: float, limit: int) -> list[dict]:
    """The most unusual images scoring above `min_score`, highest first."""
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= min_score][:limit]
    return [{**pool.item(i), "score": round(float(scores[i]), 3), "pool": int(i)} for i in order]
