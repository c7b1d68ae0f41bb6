"""Training-batch augmentations, applied to whole batches on the device (val/test untouched).

Each builder returns `augment(x, y) -> (x, target)`; target stays class indices except for
mixup, which returns soft targets (F.cross_entropy takes both).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from nnrecipe.data import DataBundle
from nnrecipe.errors import UserError


def build_augmentation(cfg: DictConfig, data: DataBundle):
    name = cfg.name
    if name == "none":
        return None
    if name == "flip_crop":
        padding, hflip = int(cfg.padding), float(cfg.hflip)  # read once, not every step
        return lambda x, y: (flip_crop(x, padding, hflip), y)
    if name == "randaugment":
        return randaugment(cfg, data)
    if name == "mixup":
        targets = getattr(data, "targets", "classes")
        if targets != "classes":  # soft targets are mixtures of classes
            raise UserError(f"augmentation=mixup (mixup/cutmix) mixes class labels, but this "
                            f"data has {targets} targets: use augmentation=none")
        return mixup(cfg, data.num_classes)
    raise UserError(f"unknown augmentation.name={name!r}: none|flip_crop|randaugment|mixup")


def flip_crop(x: torch.Tensor, padding: int, hflip: float) -> torch.Tensor:
    """Pad-and-random-crop plus horizontal flip, with its own random draw for every image.

    Hand-written because torchvision's v2 transforms draw one set of parameters per call, so
    on a batch tensor every image would get the same crop.
    """
    n, c, h, w = x.shape
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding,) * 4)  # zeros = the mean after normalising
        dy = torch.randint(0, 2 * padding + 1, (n, 1, 1, 1), device=x.device)
        dx = torch.randint(0, 2 * padding + 1, (n, 1, 1, 1), device=x.device)
        rows = torch.arange(h, device=x.device).view(1, 1, h, 1) + dy
        cols = torch.arange(w, device=x.device).view(1, 1, 1, w) + dx
        x = padded.gather(2, rows.expand(n, c, h, w + 2 * padding)).gather(
            3, cols.expand(n, c, h, w)
        )
    if hflip > 0:
        flip = torch.rand(n, 1, 1, 1, device=x.device) < hflip
        x = torch.where(flip, x.flip(-1), x)
    return x


def randaugment(cfg: DictConfig, data: DataBundle):
    """torchvision's RandAugment, one draw per image, in pixel space ([0, 1], then renormalised)."""
    from torchvision.transforms import v2

    op = v2.RandAugment(num_ops=cfg.num_ops, magnitude=cfg.magnitude)

    def apply(x, y):
        pixels = (data.denormalize(x).clamp(0, 1) * 255).to(torch.uint8)
        pixels = torch.stack([op(img) for img in pixels])  # per image: RandAugment is per image
        return data.normalize(pixels.float() / 255), y

    return apply


def mixup(cfg: DictConfig, num_classes: int):
    from timm.data import Mixup

    mix = Mixup(
        mixup_alpha=cfg.mixup_alpha,
        cutmix_alpha=cfg.cutmix_alpha,
        prob=cfg.prob,
        switch_prob=cfg.switch_prob,
        label_smoothing=cfg.label_smoothing,
        num_classes=num_classes,
    )

    def apply(x, y):
        if len(x) % 2:  # timm's Mixup pairs images: leave an odd last one out, unmixed
            x_mixed, t = mix(x[:-1].clone(), y[:-1])
            last = torch.nn.functional.one_hot(y[-1:], num_classes).to(t)
            return torch.cat([x_mixed, x[-1:]]), torch.cat([t, last])
        return mix(x.clone(), y)

    return apply
