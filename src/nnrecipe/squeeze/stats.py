"""Error bars: the recipe's "add significant digits" needs to know which digits mean something."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (accuracy = correct / n).

    Why Wilson and not p +- z*sqrt(p(1-p)/n): the normal interval collapses to zero width at
    100% (or 0%) accuracy and can leave [0, 1]; Wilson's stays inside and keeps a width.
    """
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values, z: float = Z95) -> tuple[float, float]:
    """Normal-approximation interval of the mean of per-sample values (e.g. the loss); a
    quantity that cannot be negative keeps its lower end at 0 (a near-zero loss is skewed)."""
    import torch

    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = len(v)
    if n == 0:
        return (math.nan, math.nan)
    mean = v.mean().item()
    half = z * (v.std().item() / math.sqrt(n) if n > 1 else math.inf)
    low = max(0.0, mean - half) if v.min().item() >= 0 else mean - half
    return (low, mean + half)


def format_interval(value: float, interval: tuple[float, float]) -> str:
    """0.9630 [0.9370, 0.9786]: the value and its 95% interval, four decimals."""
    return f"{value:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]"
