"""Batches: index slicing for in-memory tensors, a DataLoader for files.

Why not a DataLoader for everything: on small in-memory tensors, per-sample __getitem__ plus
collate costs 5-30x the model's own time. Slicing a tensor already on the device costs ~nothing.
"""

from __future__ import annotations

import math
import multiprocessing as mp
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from nnrecipe.data.splits import FileSplit, TensorSplit


def num_batches(split: TensorSplit | FileSplit, batch_size: int) -> int:
    return math.ceil(len(split) / batch_size)


def iterate_batches(
    split: TensorSplit | FileSplit,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    num_workers: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) batches on `device`; the order is drawn from `generator` when shuffling."""
    if isinstance(split, TensorSplit):
        n = len(split)
        if not shuffle:
            for i in range(0, n, batch_size):
                yield split.x[i : i + batch_size], split.y[i : i + batch_size]
            return
        order = torch.randperm(n, generator=generator).to(split.x.device)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            yield split.x[idx], split.y[idx]
        return

    loader = DataLoader(
        split.dataset(),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        pin_memory=device is not None and torch.device(device).type == "cuda",
        # fork: workers must start inside joblib-launched sweep trials too
        multiprocessing_context=_fork() if num_workers > 0 else None,
    )
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _fork():
    return mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
