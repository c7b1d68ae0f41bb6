"""Augmentations draw per image, touch only training batches, and keep labels consistent."""

import torch
from conftest import ROOT
from omegaconf import OmegaConf

from nnrecipe.augment import build_augmentation, flip_crop


def test_flip_crop_shifts_each_image_on_its_own_within_padding():
    x = torch.zeros(256, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0  # one bright pixel in the centre of every image
    out = flip_crop(x, padding=2, hflip=0.0)
    rows, cols = (out[:, 0] == 1).nonzero()[:, 1:].T
    assert ((rows - 4).abs() <= 2).all() and ((cols - 4).abs() <= 2).all()
    assert len(set(zip(rows.tolist(), cols.tolist()))) == 25  # all 5x5 shifts occur
    assert torch.equal(flip_crop(x, padding=0, hflip=0.0), x)


def test_flip_flips_about_half_the_images():
    x = torch.arange(4.0).view(1, 1, 1, 4).repeat(1000, 1, 1, 1)
    out = flip_crop(x, padding=0, hflip=0.5)
    flipped = (out[:, 0, 0, 0] == 3).float().mean()
    assert 0.4 < flipped < 0.6 and torch.equal(
        out[out[:, 0, 0, 0] == 3][0, 0, 0], x[0, 0, 0].flip(0)
    )


class FakeData:
    num_classes, mean, std = 10, [0.5], [0.25]

    def denormalize(self, x):
        return x * 0.25 + 0.5

    def normalize(self, x):
        return (x - 0.5) / 0.25


def test_mixup_gives_soft_targets_that_sum_to_one_even_for_odd_batches():
    mix = build_augmentation(OmegaConf.load(ROOT / "conf/augmentation/mixup.yaml"), FakeData())
    x, y = torch.randn(7, 1, 8, 8), torch.arange(7)
    xm, t = mix(x, y)
    assert xm.shape == x.shape and t.shape == (7, 10)
    assert torch.allclose(t.sum(1), torch.ones(7))
    floor = 0.1 / 10  # label smoothing's share for every class
    assert (t.topk(2).values[:, 1] > floor + 1e-3).any()  # a second class mixed in, not smoothing
    assert not torch.equal(xm, x)


def test_randaugment_changes_pixels_per_image_and_keeps_normalisation():
    cfg = OmegaConf.load(ROOT / "conf/augmentation/randaugment.yaml")
    aug = build_augmentation(cfg, FakeData())
    x = FakeData().normalize(torch.rand(16, 1, 8, 8))
    out, y = aug(x, torch.arange(16))
    assert out.shape == x.shape and torch.equal(y, torch.arange(16))
    changed = (out - x).abs().flatten(1).amax(1) > 0.05
    assert changed.float().mean() > 0.5
    assert (
        FakeData().denormalize(out).min() >= -1e-4 and FakeData().denormalize(out).max() <= 1.0001
    )


def test_none_is_no_augmentation():
    assert build_augmentation(OmegaConf.create({"name": "none"}), FakeData()) is None
