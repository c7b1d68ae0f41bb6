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
    """Pairs of different images closer than `threshold` (cosine distance of the embedding).

    Exact duplicates and constant images (whose embedding is meaningless) are left out.
    """
    rows, cols = torch.nonzero(dist <= threshold, as_tuple=True)
    seen, found = set(), []
    constant = pool.value_range <= 0
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        a, b = sorted((r, idx[r, c].item()))
        if (a, b) in seen or pool.hashes[a] == pool.hashes[b] or constant[a] or constant[b]:
            continue
        seen.add((a, b))
        pair = _group(pool, [a, b], "near")
        pair["distance"] = round(float(dist[r, c]), 5)
        found.append(pair)
    found.sort(key=lambda g: (not g["labels_disagree"], not g["leak"], g["distance"]))
    return found[:limit]


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
