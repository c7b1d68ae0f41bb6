"""Batches: index slicing for in-memory tensors, a DataLoader for files.

Why not a DataLoader for everything: on small in-memory tensors, per-sample __getitem__ plus
collate costs 5-30x the model's own time. Slicing a tensor already on the device costs ~nothing.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

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

    yield from file_batches(split, batch_size, device, num_workers, shuffle=shuffle,
                            generator=generator)


def loader_options(device, num_workers: int) -> dict:
    """The DataLoader settings for file splits (ImageFiles): workers decode whole batches."""
    workers = num_workers > 0
    return {
        "num_workers": num_workers,
        "pin_memory": device is not None and torch.device(device).type == "cuda",
        "persistent_workers": workers,       # not restarted every epoch (nor for val)
        "prefetch_factor": 4 if workers else None,  # batches each worker keeps ready
        # fork: workers must start inside joblib-launched sweep trials too
        "multiprocessing_context": _fork() if workers else None,
        "collate_fn": _batched,              # ImageFiles.__getitems__ returns whole batches
    }


def file_batches(split: FileSplit, batch_size: int, device=None, num_workers: int = 0,
                 sampler=None, shuffle: bool = False, generator: torch.Generator | None = None):
    """Normalised (x, y) batches of a file split on `device`, in the order of `sampler` (any
    iterable of indices: a DistributedSampler, a range) or drawn from `generator`.

    The DataLoader is kept per (split, batch size, workers, device), so that its workers persist
    from one epoch to the next; each call only sets the order it walks.
    """
    if sampler is not None:
        order = list(sampler)
    elif shuffle:
        order = torch.randperm(len(split), generator=generator).tolist()
    else:
        order = range(len(split))
    loader, walk = _loader(split, batch_size, device, num_workers)
    walk.order = order
    try:
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            yield split.finish(x), y.to(device, non_blocking=True)
    finally:
        walk.busy = False


class _Walk(Sampler):
    """A sampler whose order is set before each pass: one DataLoader serves every epoch."""

    def __init__(self):
        self.order, self.busy = [], False

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


# (id(split), batch size, workers, device) -> (DataLoader, _Walk), least recently used first.
# Three: training's and validation's loaders persist across epochs; a third (test, a check)
# replaces the oldest, whose workers then stop. More would keep idle processes around.
_LOADERS: dict[tuple, tuple] = {}
KEEP = 3


def _loader(split: FileSplit, batch_size: int, device, num_workers: int):
    key = (id(split), batch_size, num_workers, str(device))
    if key in _LOADERS and not _LOADERS[key][1].busy:
        _LOADERS[key] = _LOADERS.pop(key)  # most recently used last
    else:  # new, or being walked already (nested use): a second loader
        if not any(k[0] == id(split) for k in _LOADERS):  # ids are reused once it is gone
            weakref.finalize(split, _forget, id(split))
        while len(_LOADERS) >= KEEP:
            _LOADERS.pop(next(iter(_LOADERS)))
        if num_workers > 0:  # imported once here rather than in each worker (1.6-5 s)
            import torchvision.io  # noqa: F401
        walk = _Walk()
        # its own generator: a loader must not draw its workers' seed from the global RNG
        # (training would then depend on whether anything else read files before it)
        loader = DataLoader(split.dataset(fast=num_workers > 0), batch_size=batch_size,
                            sampler=walk, generator=torch.Generator().manual_seed(0),
                            **loader_options(device, num_workers))
        _LOADERS[key] = (loader, walk)
    loader, walk = _LOADERS[key]
    walk.busy = True
    return loader, walk


def _forget(split_id: int) -> None:
    for key in [k for k in _LOADERS if k[0] == split_id]:
        del _LOADERS[key]


def _batched(batch):
    return batch


def _fork():
    import multiprocessing as mp

    return mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
