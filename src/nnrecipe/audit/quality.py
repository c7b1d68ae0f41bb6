"""File and pixel quality: unreadable files, non-finite values, blank images, odd sizes/modes.

All of these land in the report's `corrupt` list with a `reason`, the worst kind first:
a file that cannot be read at all, then values that poison every loss, then images with nothing
to see, then images that differ in size or colour mode from nearly all others.
"""

from __future__ import annotations

from collections import Counter

from nnrecipe.audit.pool import Pool

SEVERITY = {"unreadable": 0, "non-finite": 1, "blank": 2, "mode": 3, "size": 4}


def corrupt_items(pool: Pool, blank_range: float, usual_fraction: float) -> list[dict]:
    """Every problem item with its `kind` and a `reason` a person can act on, worst first."""
    found = [{**u, "kind": "unreadable"} for u in pool.unreadable]
    for i in range(len(pool)):
        if pool.nonfinite[i]:
            found.append(_flag(pool, i, "non-finite",
                               f"{int(pool.nonfinite[i])} non-finite values (nan/inf)"))
        elif pool.value_range[i] <= blank_range:
            value = float(pool.images(slice(i, i + 1)).flatten()[0])
            found.append(_flag(pool, i, "blank",
                               f"blank: constant image (max - min = {pool.value_range[i]:.3f}, "
                               f"value ~{value:.2f})"))
    found += _unusual(pool, pool.modes, "mode", usual_fraction)
    found += _unusual(pool, pool.sizes, "size", usual_fraction)
    return sorted(found, key=lambda f: SEVERITY[f["kind"]])


def _unusual(pool: Pool, values: list, kind: str, usual_fraction: float) -> list[dict]:
    """Items whose size (or mode) differs from one that nearly all items share.

    When sizes vary widely (photos) no size is "usual" and nothing is flagged.
    """
    usual, fraction = common(values)
    if fraction < usual_fraction:
        return []
    show = (lambda v: f"{v[0]}x{v[1]}") if kind == "size" else str
    return [_flag(pool, i, kind, f"unexpected {kind} {show(v)} (usual: {show(usual)}, "
                                 f"{fraction:.1%} of images)")
            for i, v in enumerate(values) if v != usual]


def _flag(pool: Pool, i: int, kind: str, reason: str) -> dict:
    return {**pool.item(i), "kind": kind, "reason": reason, "pool": i}


def size_summary(pool: Pool) -> dict:
    """Sizes and modes as stored on disk (files only): how uniform the data is."""
    if not pool.sizes:
        return {}
    widths = [w for w, _ in pool.sizes]
    heights = [h for _, h in pool.sizes]
    return {"distinct_sizes": len(set(pool.sizes)), "modes": sorted(set(pool.modes)),
            "width_range": [min(widths), max(widths)],
            "height_range": [min(heights), max(heights)]}


def common(values: list) -> tuple[object, float]:
    """The most common value and the fraction of items that have it."""
    if not values:
        return None, 0.0
    value, count = Counter(values).most_common(1)[0]
    return value, count / len(values)
