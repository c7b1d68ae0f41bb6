"""Duplicates: exact (same decoded pixels) and near (same picture, slightly changed).

An exact duplicate across splits is a leak: the model is tested on what it trained on. A
duplicate group whose labels disagree is a label error in at least one of its members.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from nnrecipe.audit.pool import Pool


def exact_duplicates(pool: Pool) -> list[dict]:
    """Groups of images with identical pixels, the worst first (label conflicts, then leaks).

    Constant images are left out: they are all "the same picture", and already reported blank.
    """
    groups = defaultdict(list)
    for i, h in enumerate(pool.hashes):
        if pool.value_range[i] > 0:
            groups[h].append(i)
    found = [_group(pool, members, "exact") for members in groups.values() if len(members) > 1]
    return sorted(found, key=lambda g: (not g["labels_disagree"], not g["leak"],
                                        -len(g["items"])))


def near_duplicates(pool: Pool, dist: torch.Tensor, idx: torch.Tensor, threshold: float,
                    limit: int = 1000) -> list[dict]:
    """Pairs of different images closer than `threshold` (cosine distance of the embedding),
    label conflicts first, then leaks, then the closest; at most `limit`.

    Exact duplicates and constant images (whose embedding is meaningless) are left out. The
    pairs are filtered and ranked as arrays: a large pool of similar pictures has millions.
    """
    rows, cols = torch.nonzero(dist <= threshold, as_tuple=True)
    a, b = rows.numpy(), idx[rows, cols].numpy()
    distance = dist[rows, cols].numpy()
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    hashes = np.asarray(pool.hashes)
    constant = pool.value_range <= 0
    keep = (lo != hi) & ~constant[lo] & ~constant[hi] & (hashes[lo] != hashes[hi])
    lo, hi, distance = lo[keep], hi[keep], distance[keep]
    _, first = np.unique(lo.astype(np.int64) * len(pool) + hi, return_index=True)
    lo, hi, distance = lo[first], hi[first], distance[first]
    disagree = pool.labels[lo] != pool.labels[hi]
    leak = pool.split[lo] != pool.split[hi]
    order = np.lexsort((distance, ~leak, ~disagree))[:limit]
    found = []
    for i in order:
        pair = _group(pool, [int(lo[i]), int(hi[i])], "near")
        pair["distance"] = round(float(distance[i]), 5)
        found.append(pair)
    return found


def _group(pool: Pool, members: list[int], kind: str) -> dict:
    members = sorted(members, key=lambda i: (_SPLIT_ORDER.get(pool.split[i], 9), pool.index[i]))
    return {
        "kind": kind,
        "items": [pool.item(i) for i in members],
        "leak": len({pool.split[i] for i in members}) > 1,
        "labels_disagree": len(set(np.asarray(pool.labels)[members].tolist())) > 1,
        "pool": members,  # positions in the pool, for pictures; dropped from report.json
    }


_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
