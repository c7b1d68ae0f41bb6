"""Data: stratified seeded splits, normalisation from the training split, fast batching."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from nnrecipe.data import build_data, iterate_batches, num_batches
from nnrecipe.data.sources import stratified_split
from nnrecipe.errors import UserError


def digits_cfg(**kw):
    base = {
        "_target_": "nnrecipe.data.sources.digits",
        "batch_size": 32,
        "val_fraction": 0.15,
        "test_fraction": 0.15,
        "num_classes": 10,
        "in_chans": 1,
        "image_size": 8,
        "mean": None,
        "std": None,
    }
    return OmegaConf.create({**base, **kw})


def test_digits_splits_are_stratified_disjoint_and_fixed_by_split_seed():
    a, b, c = (build_data(digits_cfg(split_seed=s), seed=0) for s in (0, 0, 1))
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert torch.equal(a.val.x, b.val.x) and not torch.equal(a.val.x, c.val.x)
    for split in (a.val, a.test):  # each class holds ~15% of the split
        counts = torch.bincount(split.y, minlength=10).float()
        assert counts.min() >= 0.8 * counts.mean()
    idx = stratified_split(np.repeat(np.arange(5), 20), [0.2, 0.2], seed=3)
    assert len(set(np.concatenate(idx))) == 100 and [len(i) for i in idx] == [60, 20, 20]
    with pytest.raises(UserError, match="class 1 has 2 samples"):  # not one for each split
        stratified_split(np.array([0] * 10 + [1] * 2), [0.15, 0.15], seed=0)


def test_seed_varies_training_only_and_the_split_hash_says_which_test_set():
    """A seed sweep (-m seed=0,1,2) scores every run on the same test set; data.split_seed
    draws another split, and the hash tells them apart (compare_runs groups by it)."""
    a, b, c = (build_data(digits_cfg(split_seed=s), seed=t) for s, t in ((0, 0), (0, 7), (1, 0)))
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    assert a.split_hash == b.split_hash != c.split_hash
    assert isinstance(a.split_hash, str) and len(a.split_hash) == 12


def test_training_split_is_normalised_and_stats_written_back():
    cfg = digits_cfg()
    data = build_data(cfg, seed=0)
    assert data.train.x.mean().abs() < 1e-4 and (data.train.x.std() - 1).abs() < 1e-2
    assert cfg.mean == [round(m, 4) for m in data.mean] and cfg.num_classes == 10
    pixels = data.denormalize(data.val.x)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5  # digits pixels are in [0, 1]


def test_index_batching_covers_each_sample_once_per_epoch():
    data = build_data(digits_cfg(), seed=0)
    g = torch.Generator().manual_seed(0)
    ys = [y for _, y in iterate_batches(data.train, 100, shuffle=True, generator=g)]
    assert len(ys) == num_batches(data.train, 100)
    assert torch.equal(torch.cat(ys).sort().values, data.train.y.sort().values)
    xs = torch.cat([x for x, _ in iterate_batches(data.train, 100, shuffle=True, generator=g)])
    assert not torch.equal(xs, data.train.x)  # shuffled, yet the same samples
    assert torch.allclose(xs.sum(0), data.train.x.sum(0), atol=1e-3)


def write_folder(root, classes=("cat", "dog"), per_class=10, size=12, presplit=False):
    rng = np.random.default_rng(0)
    splits = ("train", "val", "test") if presplit else ("",)
    for split in splits:
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = (rng.random((size, size, 3)) * 60 + 150 * k).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("presplit", [False, True])
def test_image_folder_loads_both_layouts(tmp_path, presplit):
    root = write_folder(tmp_path / "imgs", presplit=presplit)
    (root / ("train" if presplit else "") / "cat" / "broken.png").write_text("not an image")
    cfg = OmegaConf.create(
        {
            "_target_": "nnrecipe.data.sources.image_folder",
            "root": str(root),
            "batch_size": 4,
            "image_size": 16,
            "in_chans": 3,
            "num_workers": 0,
            "val_fraction": 0.2,
            "test_fraction": 0.2,
            "mean": None,
            "std": None,
            "num_classes": None,
        }
    )
    with pytest.warns(UserWarning, match="broken.png"):
        data = build_data(cfg, seed=0)
    assert data.class_names == ["cat", "dog"] and cfg.num_classes == 2
    sizes = [len(s) for s in data.splits.values()]
    assert sizes == ([20, 20, 20] if presplit else [12, 4, 4])
    x, y = next(iterate_batches(data.train, 4, shuffle=True, generator=torch.Generator()))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    assert set(y.tolist()) <= {0, 1}
