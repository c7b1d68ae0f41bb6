"""build_data: config -> DataBundle with checked labels, normalised tensors on the device."""

from __future__ import annotations

import difflib
import inspect
import logging
import time

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from nnrecipe import runtime
from nnrecipe.data.splits import DataBundle, FileSplit, TensorSplit, split_hash
from nnrecipe.errors import UserError, instantiate

log = logging.getLogger("nnrecipe")

# Keys build_data itself uses, whatever the source: they are never handed to a source that does
# not take them (a source's own keys are its arguments; anything else is a mistake to report).
COMMON = {"_target_", "batch_size", "num_classes", "mean", "std", "in_chans", "image_size",
          "split_seed"}


def build_data(cfg: DictConfig, seed: int, device: torch.device | str = "cpu") -> DataBundle:
    """Load the configured source, check it, normalise it and move in-memory splits to device.

    The split is drawn from `data.split_seed` (default 0), not from `seed`: a seed sweep varies
    training only and every run of it is scored on the same test set (`bundle.split_hash`).
    `seed` is kept in the signature for callers; the data does not depend on it.
    Values found while loading (classes, channels, mean/std) are written back into `cfg`, so the
    logged config shows what the run really used.
    """
    if cfg.get("batch_size", 1) <= 0:
        raise UserError(f"data.batch_size must be positive, got {cfg.batch_size}")
    split_seed = cfg.get("split_seed", 0)
    started = time.perf_counter()
    bundle: DataBundle = instantiate(_source_config(cfg), "data", seed=split_seed)
    bundle.batch_size = cfg.batch_size
    bundle.num_workers = _workers(bundle.num_workers)
    if bundle.targets == "classes":  # regression values / multi-label rows: the task checks
        _check_labels(bundle, cfg.get("num_classes"))
    _check_shape(bundle, cfg)
    bundle.split_hash = split_hash(bundle.test)
    bundle.mean, bundle.std = _channel_stats(bundle, cfg.get("mean"), cfg.get("std"))
    for split in bundle.splits.values():
        if isinstance(split, TensorSplit):
            split.x = _normalized(bundle, split).to(device)
            split.y = split.y.to(device)
        else:
            split.in_chans, split.image_size = bundle.in_chans, bundle.image_size
            split.mean, split.std = bundle.mean, bundle.std
    log.info("data: %s (%.1f s)", bundle.describe(), time.perf_counter() - started)
    with open_dict(cfg):
        cfg.num_classes = bundle.num_classes
        cfg.in_chans = bundle.in_chans
        cfg.image_size = bundle.image_size
        cfg.mean = [round(m, 4) for m in bundle.mean]
        cfg.std = [round(s, 4) for s in bundle.std]
    return bundle


def _workers(configured: int | None) -> int:
    """data.num_workers, at most the cores; null: this process's share of the cores (the local
    ranks of a multi-GPU job split them), so that decoding keeps up on a GPU box."""
    if configured is not None:
        return min(configured, runtime.cores())
    from nnrecipe import distributed

    return max(1, runtime.cores() // distributed.local_world())


def _normalized(bundle: DataBundle, split: TensorSplit) -> torch.Tensor:
    """Normalised pixels. Decoded from files here (data.cache=memory, hf, webdataset): the tensor
    is ours, normalised in place, the same two operations (no second 1.2 GB copy at 100k)."""
    if split.paths is None:  # a source's tensor: it may share it between splits
        return bundle.normalize(split.x)
    mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std).view(1, -1, 1, 1)
    return split.x.sub_(mean).div_(std)


def _source_config(cfg: DictConfig) -> DictConfig:
    """The keys the source takes. A key that neither the source nor build_data uses is an error
    naming it: `**cfg` in the sources used to swallow misspelt keys silently."""
    from hydra.utils import get_object

    target = cfg.get("_target_")
    try:
        params = inspect.signature(get_object(target)).parameters
    except Exception:  # not importable: instantiate() says why, naming data._target_
        return cfg
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    keys = [k for k in cfg if k != "split_seed" and (k in params or k == "_target_" or takes_any)]
    unused = [k for k in cfg if k not in params and k not in COMMON and not takes_any]
    if unused:
        known = sorted({*params, *COMMON} - {"seed", "_target_"})
        close = difflib.get_close_matches(unused[0], known, n=1)
        hint = f" (did you mean data.{close[0]}?)" if close else ""
        raise UserError(f"data.{unused[0]} is not a key of {target}: nothing would use it{hint}. "
                        f"Its keys: {', '.join(known)}")
    return OmegaConf.masked_copy(cfg, keys)


def _check_shape(bundle: DataBundle, cfg: DictConfig) -> None:
    """data.in_chans / data.image_size given for a source that does not convert its images
    (digits, the torchvision sets): the user's value would be silently replaced."""
    for key, found in (("in_chans", bundle.in_chans), ("image_size", bundle.image_size)):
        wanted = cfg.get(key)
        if wanted is not None and wanted != found:
            raise UserError(
                f"data.{key}={wanted} but {cfg.get('_target_')} gives {found} "
                f"({'channels' if key == 'in_chans' else 'pixels a side'}) and does not convert "
                f"its images: drop the override or set data.{key}={found}"
            )


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
    """Configured per-channel mean/std; the one not given is that of the training split (a
    sample for files). A std given without a mean is kept, never recomputed."""
    if mean is None or std is None:
        x = _pixel_sample(bundle.train, bundle.in_chans, bundle.image_size)
        mean = x.mean(dim=(0, 2, 3)).tolist() if mean is None else mean
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist() if std is None else std
    mean, std = list(mean), list(std)
    if len(mean) != bundle.in_chans or len(std) != bundle.in_chans:
        raise UserError(
            f"data.mean/std have {len(mean)}/{len(std)} values but the images have "
            f"{bundle.in_chans} channels: give one value per channel"
        )
    if min(std) <= 0:
        raise UserError(f"data.std must be positive per channel, got {std}")
    return mean, std


def _pixel_sample(split, in_chans: int, size: int, limit: int = 512) -> torch.Tensor:
    step = max(1, len(split) // limit)
    if isinstance(split, TensorSplit):
        # decoded from files (data.cache=memory): the file path's sample, the same mean/std
        return split.x if split.paths is None else split.x[::step]
    from nnrecipe.data.images import decode_resized

    # decoded as training decodes them: the same mode, size and resampling
    x = torch.stack([decode_resized(data, in_chans, size)
                     for data in split.read(range(0, len(split), step))])
    return x.float().div_(255)


__all__ = ["build_data", "FileSplit", "TensorSplit"]
