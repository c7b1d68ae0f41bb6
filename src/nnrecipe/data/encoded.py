"""Encoded images (PNG/JPEG bytes) from a dataset library -> an in-memory DataBundle.

data=hf and data=webdataset both hold image files' bytes plus a label per sample. They are
decoded once, in parallel, by the decoder image folders use (the same pixels for the same
file), at data.image_size, into memory: the fast path for the CIFAR-size sets these are used
for. A split the dataset lacks is carved from its train split, stratified, by data.split_seed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from nnrecipe.data.splits import DataBundle, TensorSplit


@dataclass
class Part:
    """One split as the library gives it: sample keys (their identity), labels, and a function
    that returns the encoded bytes of samples by position."""

    keys: list[str]
    labels: list[int]
    fetch: Callable[[list[int]], list[bytes]]


def memory_bundle(parts: dict[str, Part], class_names: list[str], in_chans: int,
                  image_size: int, seed: int, fractions: dict[str, float]) -> DataBundle:
    from nnrecipe.data.sources import stratified_split

    train = parts["train"]
    missing = [n for n in ("val", "test") if n not in parts]
    train_idx, *carved = stratified_split(train.labels, [fractions[n] for n in missing], seed)
    x, y = _decode(train, in_chans, image_size), torch.tensor(train.labels)
    splits = {"train": _split(x, y, train.keys, train_idx)}
    for name, idx in zip(missing, carved, strict=True):
        splits[name] = _split(x, y, train.keys, idx)
    for name in ("val", "test"):
        if name in parts:
            part = parts[name]
            splits[name] = TensorSplit(_decode(part, in_chans, image_size),
                                       torch.tensor(part.labels), paths=list(part.keys))
    return DataBundle(splits["train"], splits["val"], splits["test"], class_names=class_names,
                      in_chans=in_chans, image_size=image_size)


def _split(x, y, keys, idx) -> TensorSplit:
    idx = torch.as_tensor(idx)
    return TensorSplit(x[idx], y[idx], paths=[keys[i] for i in idx.tolist()])


class _Encoded(Dataset):
    def __init__(self, part: Part, in_chans: int, size: int, fast: bool):
        self.part, self.in_chans, self.size, self.fast = part, in_chans, size, fast

    def __len__(self) -> int:
        return len(self.part.keys)

    def __getitems__(self, indices):
        from nnrecipe.data.images import decode_resized

        return torch.stack([decode_resized(b, self.in_chans, self.size, self.fast)
                            for b in self.part.fetch(list(indices))])


def _decode(part: Part, in_chans: int, size: int) -> torch.Tensor:
    """[N, C, size, size] float pixels in [0, 1], decoded over all cores (uint8 in transit)."""
    from tqdm.auto import tqdm

    from nnrecipe.data.batches import loader_options

    # all cores, as the folder index does; a few thousand images: workers cost more than they save
    workers = len(os.sched_getaffinity(0)) if len(part.keys) > 2048 else 0
    if workers:
        import torchvision.io  # noqa: F401  (imported once, before the workers fork)
    options = loader_options(None, workers) | {"persistent_workers": False}
    loader = DataLoader(_Encoded(part, in_chans, size, workers > 0), batch_size=512,
                        generator=torch.Generator(), **options)  # not the global RNG
    batches = list(tqdm(loader, desc="decoding images", unit="batch", disable=None, leave=False))
    return torch.cat(batches).float().div_(255)
