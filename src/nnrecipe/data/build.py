"""build_data: config -> DataBundle with checked labels, normalised tensors on the device."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, open_dict

from nnrecipe import runtime
from nnrecipe.data.splits import DataBundle, FileSplit, TensorSplit
from nnrecipe.errors import UserError, instantiate


def build_data(cfg: DictConfig, seed: int, device: torch.device | str = "cpu") -> DataBundle:
    """Load the configured source, check it, normalise it and move in-memory splits to device.

    Values found while loading (classes, channels, mean/std) are written back into `cfg`, so the
    logged config shows what the run really used.
    """
    if cfg.get("batch_size", 1) <= 0:
        raise UserError(f"data.batch_size must be positive, got {cfg.batch_size}")
    bundle: DataBundle = instantiate(cfg, "data", seed=seed)
    bundle.batch_size = cfg.batch_size
    bundle.num_workers = min(cfg.get("num_workers", 0) or 0, runtime.cores())
    if bundle.targets == "classes":  # regression values / multi-label rows: the task checks
        _check_labels(bundle, cfg.get("num_classes"))
    bundle.mean, bundle.std = _channel_stats(bundle, cfg.get("mean"), cfg.get("std"))
    for split in bundle.splits.values():
        if isinstance(split, TensorSplit):
            split.x = bundle.normalize(split.x).to(device)
            split.y = split.y.to(device)
        else:
            split.transform = _file_transform(bundle)
    with open_dict(cfg):
        cfg.num_classes = bundle.num_classes
        cfg.in_chans = bundle.in_chans
        cfg.image_size = bundle.image_size
        cfg.mean = [round(m, 4) for m in bundle.mean]
        cfg.std = [round(s, 4) for s in bundle.std]
    return bundle


def _check_labels(bundle: DataBundle, configured_classes: int | None) -> None:
    if configured_classes is not None and configured_classes != bundle.num_classes:
        raise UserError(
            f"data.num_classes={configured_classes} but the data has {bundle.num_classes} "
            f"classes ({', '.join(bundle.class_names[:10])}...): fix data.num_classes"
        )
    for name, split in bundle.splits.items():
        if len(split) == 0:
            raise UserError(f"the {name} split is empty: check the data's fractions and files")
        labels = split.labels
        if labels.dtype not in (torch.int64, torch.int32):
            raise UserError(f"{name} labels must be integers, got {labels.dtype}")
        bad = (labels < 0) | (labels >= bundle.num_classes)
        if bad.any():
            raise UserError(
                f"{int(bad.sum())} {name} labels lie outside [0, {bundle.num_classes}) "
                f"(e.g. {labels[bad][:5].tolist()}): labels must be 0..num_classes-1"
            )


def _channel_stats(bundle, mean, std) -> tuple[list[float], list[float]]:
    """Configured per-channel mean/std, or those of the training split (a sample for files)."""
    if mean is not None and std is not None:
        mean, std = list(mean), list(std)
    else:
        x = _pixel_sample(bundle.train, bundle.in_chans, bundle.image_size)
        mean = x.mean(dim=(0, 2, 3)).tolist()
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
    if len(mean) != bundle.in_chans or len(std) != bundle.in_chans:
        raise UserError(
            f"data.mean/std have {len(mean)}/{len(std)} values but the images have "
            f"{bundle.in_chans} channels: give one value per channel"
        )
    if min(std) <= 0:
        raise UserError(f"data.std must be positive per channel, got {std}")
    return mean, std


def _pixel_sample(split, in_chans: int, size: int, limit: int = 512) -> torch.Tensor:
    if isinstance(split, TensorSplit):
        return split.x
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor

    from nnrecipe.data.images import load_image

    step = max(1, len(split) // limit)
    # read as training reads them (_file_transform): the same mode, the same size
    mode = "L" if in_chans == 1 else "RGB"
    images = [load_image(split.root / p, mode) for p in split.paths[::step]]
    images = [i.resize((size, size), Image.BILINEAR) for i in images]
    return torch.stack([pil_to_tensor(i).float() / 255 for i in images])


def _file_transform(bundle: DataBundle):
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.Grayscale(1) if bundle.in_chans == 1 else v2.Identity(),
            v2.Resize((bundle.image_size, bundle.image_size), antialias=True),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(bundle.mean, bundle.std),
        ]
    )


__all__ = ["build_data", "FileSplit", "TensorSplit"]
