"""The pool: every image of every split in one place, as the audit sees it.

Data comes from build_data, so splits, seed and labels are exactly those training uses. Image
files are read here again, one by one, so that a file training skips (unreadable) is reported
instead of silently missing, and every readable one is hashed on its decoded pixels.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from nnrecipe.data import DataBundle
from nnrecipe.data.images import converted, is_image_file, unreadable_reason

SPLITS = ("train", "val", "test")


@dataclass
class Pool:
    """N images of all splits, concatenated: findings refer to them by position in the pool."""

    class_names: list[str]
    split: np.ndarray            # [N] split name of each image
    index: np.ndarray            # [N] its index inside that split (what training calls it)
    labels: np.ndarray           # [N] int class
    paths: list[str | None]      # relative to data.root for files, None for tensors
    thumbs: torch.Tensor         # [N, C, T, T] pixels in [0, 1] (nan where the data had nan)
    hashes: list[str]            # content hash of the decoded pixels
    value_range: np.ndarray      # [N] max - min pixel value (0: a constant image)
    nonfinite: np.ndarray        # [N] count of nan/inf values
    sizes: list[tuple[int, int]] = field(default_factory=list)  # files: (width, height)
    modes: list[str] = field(default_factory=list)              # files: PIL mode as stored
    unreadable: list[dict] = field(default_factory=list)        # files training skips
    channel_mean: list[float] = field(default_factory=list)     # of the train split
    channel_std: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def item(self, i: int) -> dict:
        """The report's ITEM: where an image lives and what it is labelled."""
        return {"split": str(self.split[i]), "index": int(self.index[i]), "path": self.paths[i],
                "label": self.class_names[int(self.labels[i])]}

    def in_split(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.split == name)

    def images(self, rows=slice(None)) -> torch.Tensor:
        """Thumbnails of `rows` as float pixels in [0, 1] (nan where the data had nan). File
        pools keep them as uint8, a quarter of the memory (600 MB for 200k 32x32 RGB images)."""
        t = self.thumbs[rows]
        return t.float().div_(255) if t.dtype == torch.uint8 else t

    def blocks(self, size: int = 8192):
        """(rows, float thumbnails) in blocks: what streams over the pool uses."""
        for start in range(0, len(self), size):
            rows = slice(start, min(start + size, len(self)))
            yield rows, self.images(rows)


def build_pool(data: DataBundle, thumb_size: int = 32, progress: bool = True) -> Pool:
    """Collect every split of `data` (as returned by build_data) into one Pool."""
    if data.in_memory:
        return _tensor_pool(data, thumb_size)
    return _file_pool(data, thumb_size, progress)


def _tensor_pool(data: DataBundle, thumb_size: int) -> Pool:
    parts = {name: (data.denormalize(s.x.cpu().float()), s.y.cpu()) for name, s in
             data.splits.items()}
    x = torch.cat([p[0] for p in parts.values()])
    y = torch.cat([p[1] for p in parts.values()])
    flat = x.flatten(1)
    vmin, vmax = torch.aminmax(flat, dim=1) if len(x) else (torch.zeros(0), torch.zeros(0))
    nonfinite = torch.zeros(len(x), dtype=torch.long)
    bad = torch.nonzero(~torch.isfinite(flat.sum(1))).flatten()  # one cheap pass over all
    if len(bad):  # the few images with nan/inf: count them and take the range of the rest
        finite = torch.isfinite(flat[bad])
        nonfinite[bad] = (~finite).sum(1)
        vmax[bad] = torch.where(finite, flat[bad], -torch.inf).amax(1)
        vmin[bad] = torch.where(finite, flat[bad], torch.inf).amin(1)
    train = parts["train"][0].nan_to_num(0.0, 0.0, 0.0)
    return Pool(
        class_names=list(data.class_names),
        split=np.concatenate([np.full(len(p[1]), n) for n, p in parts.items()]),
        index=np.concatenate([np.arange(len(p[1])) for p in parts.values()]),
        labels=y.numpy(),
        paths=[None] * len(y),
        thumbs=_shrink(x, thumb_size),
        hashes=[hashlib.blake2b(r.tobytes(), digest_size=16).hexdigest()
                for r in x.numpy().reshape(len(x), -1)],
        value_range=(vmax - vmin).nan_to_num(0.0).clamp_min(0).numpy(),
        nonfinite=nonfinite.numpy(),
        channel_mean=train.mean(dim=(0, 2, 3)).tolist(),
        channel_std=train.std(dim=(0, 2, 3)).tolist(),
        unreadable=[{"split": "unsplit", "index": -1, **item} for item in data.skipped],
    )


def _shrink(x: torch.Tensor, size: int) -> torch.Tensor:
    """Area-downsample to at most size x size: enough to see and compare, cheap to keep."""
    if x.shape[-1] <= size and x.shape[-2] <= size:
        return x
    return F.interpolate(x, size=(size, size), mode="area")


def _file_pool(data: DataBundle, thumb_size: int, progress: bool) -> Pool:
    root = Path(data.train.root)
    mode = "L" if data.in_chans == 1 else "RGB"
    t = min(thumb_size, data.image_size)
    items = [(name, i, Path(rel).as_posix(), target) for name, s in data.splits.items()
             for i, (rel, target) in enumerate(zip(s.paths, s.targets, strict=True))]
    thumbs = np.empty((len(items), data.in_chans, t, t), dtype=np.uint8)
    kept, hashes, ranges, sizes, modes, unreadable = [], [], [], [], [], []
    sums = np.zeros((3, data.in_chans))  # pixel count, sum and sum of squares (train split)
    bar = tqdm(total=len(items), desc="audit: reading images", unit="img",
               disable=None if progress else True, leave=False)
    train = [name == "train" for name, *_ in items]
    files = data.train.reader is None

    def sources(start: int, stop: int) -> list:
        """Paths of files (read by the decoding processes), or a library's bytes (read here)."""
        if files:
            return [str(root / rel) for _, _, rel, _ in items[start:stop]]
        out = []
        for name, group in itertools.groupby(items[start:stop], key=lambda item: item[0]):
            out += data.splits[name].read([i for _, i, _, _ in group])
        return out

    for start, chunk in _decode_all(len(items), sources, train, mode, data.image_size, t):
        for k, image in enumerate(chunk["images"]):
            j = start + k
            name, i, rel, target = items[j]
            if "error" in image:  # changed on disk since build_data scanned it: report it
                label = data.class_names[target]
                unreadable.append(
                    _unreadable(root, root / rel, name, i, label, image["error"]) if files
                    else {"split": name, "index": i, "path": rel, "label": label,
                          "reason": f"not a readable image ({image['error']})"})
                continue
            thumbs[len(kept)] = image["thumb"]
            kept.append(j)
            hashes.append(image["hash"])
            ranges.append(image["range"])
            sizes.append(image["size"])
            modes.append(image["mode"])
        sums += chunk["sums"]
        bar.update(len(chunk["images"]))
    bar.close()
    if files:
        unreadable += _skipped_files(root, data, {rel for _, _, rel, _ in items})
    else:  # those the library's source left out (a shard's broken images): in no split
        unreadable += [{"split": "unsplit", "index": -1, **item} for item in data.skipped]
    count = max(sums[0, 0], 1)
    mean = sums[1] / count
    std = np.sqrt(np.maximum(sums[2] / count - mean**2, 0))
    return Pool(
        class_names=list(data.class_names),
        split=np.array([items[j][0] for j in kept], dtype=object).astype(str),
        index=np.array([items[j][1] for j in kept], dtype=np.int64),
        labels=np.array([items[j][3] for j in kept], dtype=np.int64),
        paths=[items[j][2] for j in kept],
        thumbs=torch.from_numpy(thumbs[: len(kept)].copy() if len(kept) < len(items)
                                else thumbs),
        hashes=hashes,
        value_range=np.array(ranges, dtype=np.float64),
        nonfinite=np.zeros(len(kept), dtype=np.int64),  # decoded 8-bit pixels are finite
        sizes=sizes,
        modes=modes,
        unreadable=unreadable,
        channel_mean=mean.tolist(),
        channel_std=std.tolist(),
    )


CHUNK = 512  # files per task of the decoding processes


def _decode_all(n: int, sources, train: list[bool], mode: str, size: int, thumb: int):
    """Yield (start, decoded chunk) in order, for items [0, n) whose paths or bytes
    `sources(start, stop)` gives: on all cores (runtime.process_map), a library's bytes read
    here only as they are needed."""
    from nnrecipe import runtime

    def job(start):
        return (sources(start, min(start + CHUNK, n)), train[start:start + CHUNK], mode, size,
                thumb)

    starts = range(0, n, CHUNK)
    chunks = runtime.process_map(_decode_chunk, map(job, starts),
                                 min(runtime.cores(), len(starts)))
    yield from zip(starts, chunks)


def _decode_chunk(job) -> dict:
    sources, train, mode, size, thumb = job
    images, sums = [], 0.0  # + [3, C] arrays of the train images
    for source, is_train in zip(sources, train, strict=True):
        try:
            image = _decode(source, mode, size, thumb, stats=is_train)
        except Exception as e:  # changed on disk since build_data scanned it: report it
            images.append({"error": f"{type(e).__name__}: {e}"})  # text: crosses processes
            continue
        if is_train:
            sums = sums + image.pop("sums")
        images.append(image)
    return {"images": images, "sums": sums}


def _decode(source: str | bytes, mode: str, size: int, thumb: int, stats: bool = True) -> dict:
    """One image (a file's path, or encoded bytes) as the audit needs it; raises when it cannot
    be decoded. `stats`: the pixel sums of training's view (the train split's mean/std). The
    pixels become an array once: each PIL -> numpy conversion cost as much as the decoding of
    a 32x32 PNG."""
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(source) if isinstance(source, bytes) else source) as im:
        im.load()
        stored_size, stored_mode = im.size, im.mode
        pixels = np.asarray(converted(im, mode))  # as training reads
    pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)
    out = {
        "thumb": _resized(pixels, thumb, Image.BOX).transpose(2, 0, 1),
        "hash": hashlib.blake2b(pixels.tobytes() + str(pixels.shape[:2] if pixels.shape[2] == 1
                                                       else pixels.shape).encode(),
                                digest_size=16).hexdigest(),
        "range": (int(pixels.max()) - int(pixels.min())) / 255 if pixels.size else 0.0,
        "size": stored_size,
        "mode": stored_mode,
    }
    if stats:
        view = _resized(pixels, size, Image.BILINEAR).reshape(size * size, -1) / 255.0
        out["sums"] = np.stack([np.full(view.shape[1], len(view)), view.sum(0),
                                (view**2).sum(0)])
    return out


def _resized(pixels: np.ndarray, side: int, method) -> np.ndarray:
    """[H, W, C] uint8 at side x side (PIL's resampling, as training's transform)."""
    if pixels.shape[:2] == (side, side):
        return pixels
    from PIL import Image

    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    return np.asarray(image.resize((side, side), method)).reshape(side, side, -1)


def _unreadable(root: Path, path: Path, split: str, index: int, label: str,
                error: str | None = None) -> dict:
    reason = unreadable_reason(path)
    if reason is None and error is not None:
        reason = f"not a readable image ({error})"
    reason = (reason or "unreadable").replace(f" '{path}'", "")  # the item has the path
    return {"split": split, "index": index, "path": path.relative_to(root).as_posix(),
            "label": label, "reason": reason}


def _skipped_files(root: Path, data: DataBundle, seen: set[str]) -> list[dict]:
    """Image files under the class folders that no split holds: those training skipped.

    The source drops unreadable files while scanning; this walks the same folders to name them.
    They belong to no split, so their split is the folder they sit in (train/val/test for a
    pre-split layout, "unsplit" otherwise) and their index is -1.
    """
    presplit = (root / "train").is_dir()
    folders = [root / s for s in SPLITS if (root / s).is_dir()] if presplit else [root]
    found = []
    for folder in folders:
        for name in data.class_names:
            class_dir = folder / name
            if not class_dir.is_dir():
                continue
            for path in sorted(p for p in class_dir.rglob("*") if p.is_file() and not any(
                    part.startswith(".") for part in p.relative_to(class_dir).parts[:-1])):
                rel = path.relative_to(root).as_posix()
                if rel in seen or not is_image_file(path):
                    continue
                split = folder.name if presplit else "unsplit"
                found.append(_unreadable(root, path, split, -1, name))
    return found

