"""Data sources: each returns a DataBundle of un-normalised splits (pixels in [0, 1]).

Each source is the `_target_` of a conf/data/*.yaml. Its arguments are its keys: build_data
hands it those (and `seed`, from data.split_seed), keeps the common ones (batch size, mean, ...)
and rejects a key nobody takes. No `**cfg` here: it would swallow a misspelt key silently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nnrecipe.data.splits import DataBundle, TensorSplit
from nnrecipe.errors import UserError


def stratified_split(labels, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Indices for a train split plus one split per fraction, stratified and fixed by seed.

    A split of fraction f gets round(f x N) samples, shared among the classes in proportion
    (largest remainders round up), at least one of each class. By hand rather than sklearn's
    train_test_split, whose import (scipy included) cost 1.8 s of the 10 s default job.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    sizes = np.zeros((len(classes), len(fractions)), dtype=np.int64)  # [class, split]
    for j, f in enumerate(fractions):
        sizes[:, j] = _share(counts, f, rng)
    for c, n, wanted in zip(classes, counts, sizes.sum(axis=1), strict=True):
        if wanted >= n:
            raise UserError(
                f"class {c} has {n} samples: too few to put one in every split (train plus "
                f"fractions {list(fractions)}). Use smaller val/test fractions or more images "
                f"per class."
            )
    parts = [[] for _ in range(len(fractions) + 1)]
    for c, class_sizes in zip(classes, sizes, strict=True):
        members = rng.permutation(np.flatnonzero(labels == c))
        *carved, rest = np.split(members, np.cumsum(class_sizes))
        for part, chunk in zip(parts, [rest, *carved], strict=True):
            part.append(chunk)
    return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]


def _share(counts: np.ndarray, fraction: float, rng) -> np.ndarray:
    """round(fraction x total) samples split over classes in proportion to their counts."""
    if fraction <= 0:
        return np.zeros(len(counts), dtype=np.int64)
    exact = fraction * counts
    sizes = np.floor(exact).astype(np.int64)
    short = round(fraction * counts.sum()) - sizes.sum()
    by_remainder = np.lexsort((rng.random(len(counts)), sizes - exact))  # ties: at random
    sizes[by_remainder[:max(0, short)]] += 1
    return np.maximum(sizes, 1)


def _tensor_bundle(x: torch.Tensor, y: torch.Tensor, class_names, seed, fractions):
    train, val, test = stratified_split(y.numpy(), fractions, seed)
    return DataBundle(
        *(TensorSplit(x[i], y[i]) for i in (train, val, test)),
        class_names=list(class_names),
        in_chans=x.shape[1],
        image_size=x.shape[-1],
    )


def digits(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15):
    """scikit-learn's bundled 8x8 digits (1,797 images, pixel values 0..16)."""
    rows = _bundled_digits()
    x = torch.tensor(rows[:, :-1], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(rows[:, -1], dtype=torch.long)
    names = [str(c) for c in range(10)]
    return _tensor_bundle(x, y, names, seed, [val_fraction, test_fraction])


def _bundled_digits():
    """The rows of sklearn's digits.csv.gz (64 pixels, then the label), read without importing
    sklearn: its import (scipy included) took 1.8 s, a fifth of the default job."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without running it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.exists():  # another layout: let sklearn find its own file
        from sklearn.datasets import load_digits

        d = load_digits()
        return np.column_stack([d.data, d.target])
    return np.loadtxt(path, delimiter=",")


def synthetic(
    seed: int = 0,
    num_samples: int = 2000,
    shape=(3, 32, 32),
    num_classes: int = 10,
    noise: float = 1.0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
):
    """Learnable random tensors: one random prototype per class plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, *shape, generator=g)
    y = torch.arange(num_samples) % num_classes
    y = y[torch.randperm(num_samples, generator=g)]
    x = prototypes[y] + noise * 0.25 * torch.randn(num_samples, *shape, generator=g)
    names = [f"class_{c}" for c in range(num_classes)]
    return _tensor_bundle(x, y, names, seed, [val_fraction, test_fraction])


def torchvision_set(
    name: str,
    root: str = "data",
    download: bool = True,
    seed: int = 0,
    val_fraction: float = 0.1,
):
    """A torchvision dataset (MNIST, FashionMNIST, CIFAR10, CIFAR100) held in memory.

    val is carved from the official training set (stratified by seed); test is the official one.
    """
    import torchvision

    cls = getattr(torchvision.datasets, name, None)
    if cls is None:
        raise UserError(f"torchvision has no dataset named {name!r} (data.name)")
    try:
        sets = [cls(root, train=train, download=download) for train in (True, False)]
    except Exception as e:  # no network, a proxy, a partial file: all end here
        raise UserError(
            f"could not load {name} from {Path(root).resolve()} ({type(e).__name__}: {e}). "
            f"Without network access, download it elsewhere (torchvision.datasets.{name}"
            f"(root, download=True)) and copy the files into {Path(root).resolve()}/, "
            f"or point data.root at a folder that holds them."
        ) from e
    xs, ys = [], []
    for s in sets:
        x = torch.as_tensor(np.asarray(s.data))
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # -> [N, C, H, W]
        xs.append(x.float().div_(255.0))
        ys.append(torch.as_tensor(np.asarray(s.targets), dtype=torch.long))
    train, val = stratified_split(ys[0].numpy(), [val_fraction], seed)
    return DataBundle(
        TensorSplit(xs[0][train], ys[0][train]),
        TensorSplit(xs[0][val], ys[0][val]),
        TensorSplit(xs[1], ys[1]),
        class_names=[str(c) for c in sets[0].classes],
        in_chans=xs[0].shape[1],
        image_size=xs[0].shape[-1],
    )


from nnrecipe.data.folder import image_folder  # noqa: E402, F401  (its _target_ name)
