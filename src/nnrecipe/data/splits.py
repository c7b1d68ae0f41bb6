"""The shapes data takes once loaded: tensors in memory, or files read by a DataLoader."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass
class TensorSplit:
    """A split that fits in memory: images [N, C, H, W] float (a table: [N, F, 1, 1]); targets
    [N] int64 class labels, or float [N] / [N, K] (regression values, multi-label 0/1 rows)."""

    x: torch.Tensor
    y: torch.Tensor
    paths: list[str] | None = None     # the files it was decoded from (data.cache=memory)
    hashes: list[bytes] | None = None  # their content hashes, from the index

    def __len__(self) -> int:
        return len(self.y)

    @property
    def labels(self) -> torch.Tensor:
        return self.y


@dataclass
class FileSplit:
    """A split of encoded images (files under `root`, or samples a `reader` returns), decoded
    and resized by DataLoader workers into uint8 batches; `finish` makes them float and
    normalised on the device (4x less to copy there)."""

    root: Path
    paths: list[str]           # relative to root, posix (str: 100k Path objects cost seconds)
    targets: list[int]
    hashes: list[bytes] | None = None  # content hash per file, from the index (leakage check)
    # where the bytes of `paths` come from when they are not files under root: members of tar
    # shards (data=webdataset), rows of a Hugging Face table (data=hf). keys -> encoded bytes
    reader: Callable[[list[str]], list[bytes]] | None = None
    in_chans: int = 3          # the rest: set by build_data
    image_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def read(self, indices) -> list[bytes]:
        """The encoded bytes of the samples at `indices`."""
        keys = [k.decode(errors="surrogateescape")  # file names that are not UTF-8: as listed
                for k in self.packed[0][np.asarray(indices, dtype=np.int64)]]
        if self.reader is not None:
            return self.reader(keys)
        return [(self.root / k).read_bytes() for k in keys]

    @functools.cached_property
    def packed(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys as one fixed-width bytes array, targets as int64): what DataLoader workers
        read. A Python list of 700k str objects is copied page by page into every forked worker
        as their reference counts change (+87 MB per worker over one epoch, measured); numpy
        buffers are only read, so they stay shared."""
        return (np.array([k.encode(errors="surrogateescape") for k in self.paths],
                         dtype=np.bytes_),
                np.asarray(self.targets, dtype=np.int64))

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor(self.targets, dtype=torch.long)

    def dataset(self, fast: bool = False) -> Dataset:
        return ImageFiles(self, fast)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, H, W] -> float, normalised by the split's mean/std, where x lies."""
        x = x.float().div_(255)
        if self.mean is None:
            return x
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)


class ImageFiles(Dataset):
    """Decodes whole batches (__getitems__): one call per batch rather than per sample, and the
    samples come back stacked, so the DataLoader's collate has nothing left to do."""

    def __init__(self, split: FileSplit, fast: bool = False):
        self.split, self.fast = split, fast  # fast: torchvision's PNG decoder (see images.py)
        split.packed  # noqa: B018  packed here, in the parent: the forked workers share it

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        from nnrecipe.data.images import decode_resized

        s = self.split
        images = [decode_resized(data, s.in_chans, s.image_size, self.fast)
                  for data in s.read(indices)]
        return torch.stack(images), torch.from_numpy(s.packed[1][np.asarray(indices)])


@dataclass
class DataBundle:
    """Train, val and test splits plus what a model and the checks need to know about them."""

    train: TensorSplit | FileSplit
    val: TensorSplit | FileSplit
    test: TensorSplit | FileSplit
    class_names: list[str]
    in_chans: int
    image_size: int
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    batch_size: int = 32
    num_workers: int = 0
    # what the targets are, for the task that learns them (nnrecipe.tasks): classes (int64 [N],
    # class_names: the classes) | values (float [N, K]: regression) | labels (0/1 float [N, K]:
    # multi-label); class_names then names the K outputs, so num_classes is the output width
    targets: str = "classes"
    split_hash: str | None = None  # identity of the test split (build_data): runs compare on it
    # samples a library's source left out ({"path": key, "label", "reason"}): the audit lists
    # them (an image folder's skipped files are found by walking the folder again)
    skipped: list[dict] = field(default_factory=list)
    read_note: str = ""  # what the source did to get them ("index reused: 0 of 24 files read")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def splits(self) -> dict[str, TensorSplit | FileSplit]:
        return {"train": self.train, "val": self.val, "test": self.test}

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, TensorSplit)

    def describe(self) -> str:
        """One line: sizes, classes, shape, how batches are made and what the source did."""
        sizes = " · ".join(f"{name} {len(split):,}" for name, split in self.splits.items())
        n = self.num_classes
        what = {"classes": f"{n} classes", "values": f"{n} target value(s)",
                "labels": f"{n} labels"}.get(self.targets, f"{n} {self.targets}")
        shape = (f"{self.in_chans} features" if self.image_size == 1  # a table's rows
                 else f"{self.in_chans}x{self.image_size}x{self.image_size} images")
        how = ("in memory" if self.in_memory
               else f"read by {self.num_workers} DataLoader worker(s)")
        note = f"; {self.read_note}" if self.read_note else ""
        return (f"{sum(len(s) for s in self.splits.values()):,} samples ({sizes}), {what}, "
                f"{shape}, {how}{note}")

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised batch -> pixel values in [0, 1], for pictures and pixel-space augmentation."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return x * std + mean

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def split_hash(split: TensorSplit | FileSplit) -> str:
    """A short hash of which samples a split holds (file paths and labels, or the tensors'
    bytes): equal hashes mean runs were scored on the same samples, data.cache=memory or not.
    Hashed before normalising, so it does not depend on the mean/std."""
    import hashlib

    h = hashlib.blake2b(digest_size=6)
    if isinstance(split, TensorSplit) and split.paths is None:
        h.update(split.x.detach().cpu().contiguous().numpy().tobytes())
        y = split.y.detach().cpu()  # class ids hash the same whatever their int dtype
        y = y if y.is_floating_point() else y.to(torch.int64)
        h.update(y.contiguous().numpy().tobytes())
    else:
        for path, target in zip(split.paths, split.labels.tolist(), strict=True):
            h.update(f"{path}\t{target}\n".encode(errors="surrogateescape"))
    return h.hexdigest()


def warn_skipped(paths: list[str], why: str) -> None:
    if paths:
        shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        warnings.warn(f"skipping {len(paths)} {why}: {shown}", stacklevel=2)
