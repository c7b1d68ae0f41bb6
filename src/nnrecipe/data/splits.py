"""The shapes data takes once loaded: tensors in memory, or files read by a DataLoader."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset


@dataclass
class TensorSplit:
    """A split that fits in memory: images [N, C, H, W] float (a table: [N, F, 1, 1]); targets
    [N] int64 class labels, or float [N] / [N, K] (regression values, multi-label 0/1 rows)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    @property
    def labels(self) -> torch.Tensor:
        return self.y


@dataclass
class FileSplit:
    """A split of image files under `root`, read and decoded by DataLoader workers."""

    root: Path
    paths: list[Path]          # relative to root
    targets: list[int]
    transform: object = None   # set by build_data once mean/std are known

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor(self.targets, dtype=torch.long)

    def dataset(self) -> Dataset:
        return ImageFiles(self)


class ImageFiles(Dataset):
    def __init__(self, split: FileSplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        from nnrecipe.data.images import load_image

        image = load_image(self.split.root / self.split.paths[i])
        return self.split.transform(image), self.split.targets[i]


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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def splits(self) -> dict[str, TensorSplit | FileSplit]:
        return {"train": self.train, "val": self.val, "test": self.test}

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, TensorSplit)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised batch -> pixel values in [0, 1], for pictures and pixel-space augmentation."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return x * std + mean

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def warn_skipped(paths: list[str], why: str) -> None:
    if paths:
        shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        warnings.warn(f"skipping {len(paths)} {why}: {shown}", stacklevel=2)
