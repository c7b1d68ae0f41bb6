"""data.cache=memory: images decoded once into memory, then trained on like digits.

Slicing tensors costs nothing next to per-sample loading (5-30x faster on small images), so a
dataset that fits in memory at its image_size trains on the in-memory path. For an image folder
the decoded pixels (uint8, 4x smaller than float) are kept on disk beside the folder's index
and reused while the files' content hashes match; only new or changed files are decoded again.
A library's samples (data=hf, data=webdataset) are decoded at each start: its own files are
the cache.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from nnrecipe import runtime
from nnrecipe.data.index import Index, cache_path, load_pickle, save_pickle
from nnrecipe.data.splits import DataBundle, FileSplit, TensorSplit
from nnrecipe.errors import UserError

DECODER = 2  # bump when decoding changes (2: 16-bit images scaled, not clipped): pixels
# cached by an older decoder are then decoded again, never reused


def to_memory(bundle: DataBundle, index: Index | None = None,
              directory: Path | None = None) -> DataBundle:
    """The bundle with each FileSplit replaced by a TensorSplit of its decoded pixels in [0, 1]
    that remembers its samples (paths, hashes: the split's identity and the leakage check).
    `index`: the folder's (pixels cached by content hash in `directory`); None: decode all."""
    _check_fits(sum(len(s) for s in bundle.splits.values()), bundle.in_chans,
                bundle.image_size)
    if index is None:
        decoded = [decode(s, bundle.in_chans, bundle.image_size) for s in bundle.splits.values()]
    else:
        wanted = {p: index.entries[p].hash for s in bundle.splits.values() for p in s.paths}
        pixels, row = _cached_pixels(bundle.train, wanted, bundle.in_chans, bundle.image_size,
                                     directory)
        decoded = [pixels[torch.tensor([row[p] for p in s.paths], dtype=torch.long)]
                   for s in bundle.splits.values()]  # one gather each
    bundle.train, bundle.val, bundle.test = (
        TensorSplit(x.float().div_(255), torch.tensor(s.targets), paths=list(s.paths),
                    hashes=s.hashes)
        for x, s in zip(decoded, bundle.splits.values(), strict=True))
    return bundle


def _check_fits(n: int, chans: int, size: int) -> None:
    """Fail before decoding rather than swap or be killed: uint8 pixels plus the float copy."""
    need = n * chans * size * size * 5
    total = machine_memory()
    if need > 0.8 * total:
        raise UserError(
            f"data.cache=memory: {n:,} images at {size}x{size} need ~{need / 2**30:.1f} GiB, "
            f"this machine has {total / 2**30:.1f} GiB: use data.cache=index (images read by "
            f"DataLoader workers at every batch) or a smaller data.image_size"
        )


def machine_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _cached_pixels(like: FileSplit, wanted: dict[str, bytes], chans: int, size: int,
                   directory: Path | None) -> tuple[torch.Tensor, dict[str, int]]:
    """uint8 [N, C, size, size] holding every file of `wanted` ({path: content hash}) and the
    row of each. Rows whose file changed are decoded again; the tensor is saved when it
    changed. Whole-tensor operations only: 100k per-image tensors cost seconds."""
    cache_file = (cache_path(like.root, directory, f"pixels-v{DECODER}-{chans}x{size}")
                  if directory is not None else None)
    saved = load_pickle(cache_file) or {"paths": [], "hashes": [], "pixels": None}
    row = {rel: i for i, (rel, h) in enumerate(zip(saved["paths"], saved["hashes"]))
           if wanted.get(rel) == h}
    todo = [rel for rel in wanted if rel not in row]
    if not todo and len(row) == len(saved["paths"]):
        return saved["pixels"], row
    keep = sorted(row.values())
    parts = [saved["pixels"][torch.tensor(keep, dtype=torch.long)]] if keep else []
    todo_split = dataclasses.replace(like, paths=todo, targets=[0] * len(todo), hashes=None)
    parts += [decode(todo_split, chans, size)] if todo else []
    paths = [saved["paths"][i] for i in keep] + todo
    pixels = torch.cat(parts)
    if cache_file is not None:
        save_pickle(cache_file, {"paths": paths, "hashes": [wanted[p] for p in paths],
                                 "pixels": pixels})
    return pixels, {rel: i for i, rel in enumerate(paths)}


def decode(split: FileSplit, chans: int, size: int) -> torch.Tensor:
    """uint8 [N, chans, size, size]: decoded by DataLoader workers over all cores, as the file
    path decodes them (the same pixels)."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from nnrecipe.data.batches import loader_options

    # all cores; one core, or a few thousand images: workers cost more than they save
    workers = runtime.cores() if len(split) > 2048 and runtime.cores() > 1 else 0
    if workers:
        import torchvision.io  # noqa: F401  (imported once, before the workers fork)
    split = dataclasses.replace(split, in_chans=chans, image_size=size)
    options = loader_options(None, workers) | {"persistent_workers": False}
    loader = DataLoader(split.dataset(fast=workers > 0), batch_size=256,
                        generator=torch.Generator(), **options)  # not the global RNG
    name = split.root.name or str(split.root)
    return torch.cat([x for x, _ in tqdm(loader, desc=f"decoding {name} into memory",
                                         unit="batch", disable=None, leave=False)])
