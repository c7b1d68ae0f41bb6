"""Batches: index slicing for in-memory tensors, a DataLoader for files.

Why not a DataLoader for everything: on small in-memory tensors, per-sample __getitem__ plus
collate costs 5-30x the model's own time. Slicing a tensor already on the device costs ~nothing.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing as mp
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Subset

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
    rank: int = 0,
    world: int = 1,
    skip: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) batches on `device`; the order is drawn from `generator` when shuffling.

    `batch_size` is the global batch. With `world` > 1, this rank's share of it:
    - in memory, shuffled: every rank draws the same permutation and takes its contiguous
      1/world of each global batch, so the ranks together see exactly the batches one process
      sees (a last batch with fewer samples than ranks is left out of that epoch);
    - in memory, in order (evaluation): this rank's contiguous 1/world of the split, every
      sample on exactly one rank;
    - files: a DistributedSampler when shuffled (its seed drawn from `generator`, so the order
      is resumable), a contiguous range otherwise.
    `skip`: global batches to leave out at the start (a run resumed in the middle of an epoch).
    """
    if isinstance(split, TensorSplit):
        yield from _tensor_batches(split, batch_size, shuffle, generator, rank, world, skip)
        return
    loader = _file_loader(split, batch_size, shuffle, generator, device, num_workers, rank, world)
    for x, y in itertools.islice(loader, skip, None):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _tensor_batches(split: TensorSplit, batch_size, shuffle, generator, rank, world, skip):
    n = len(split)
    if not shuffle:
        start, stop = shard_range(n, rank, world)
        for i in range(start + skip * batch_size, stop, batch_size):
            j = min(i + batch_size, stop)
            yield split.x[i:j], split.y[i:j]
        return
    order = torch.randperm(n, generator=generator).to(split.x.device)
    for i in range(skip * batch_size, n, batch_size):
        idx = order[i : i + batch_size]
        if world > 1:
            if len(idx) < world:
                return  # a tail smaller than the ranks: dropped, no rank gets an empty batch
            idx = torch.tensor_split(idx, world)[rank]
        yield split.x[idx], split.y[idx]


def global_batch_sizes(n: int, batch_size: int) -> list[int]:
    """The size of each global batch of an epoch over `n` samples (the last may be smaller)."""
    return [min(batch_size, n - i) for i in range(0, n, batch_size)]


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of n samples: the shares cover each sample once."""
    return rank * n // world, (rank + 1) * n // world


def _file_loader(split, batch_size, shuffle, generator, device, num_workers, rank, world):
    dataset, sampler = split.dataset(), None
    if world > 1 and shuffle:
        from torch.utils.data.distributed import DistributedSampler

        seed = int(torch.randint(2**31 - 1, (1,), generator=generator)) if generator else 0
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                     seed=seed)
        sampler.set_epoch(0)  # a fresh seed each epoch from `generator` plays set_epoch's role
        shuffle, generator = False, None
    elif world > 1:
        dataset = Subset(dataset, range(*shard_range(len(dataset), rank, world)))
    return DataLoader(
        dataset,
        batch_size=batch_size // world if sampler is not None else batch_size,  # rank's share
        shuffle=shuffle,
        sampler=sampler,
        generator=generator,
        num_workers=num_workers,
        pin_memory=device is not None and torch.device(device).type == "cuda",
        # fork: workers must start inside joblib-launched sweep trials too
        multiprocessing_context=_fork() if num_workers > 0 else None,
    )


def _fork():
    return mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
