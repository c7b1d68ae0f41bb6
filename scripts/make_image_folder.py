"""Write a learnable image folder (root/<class>/<n>.<ext>) for benchmarks and manual tries.

    python scripts/make_image_folder.py /tmp/folder100k --images 100000 --size 32
    python scripts/make_image_folder.py /tmp/jpegs --images 8000 --size 256 --format jpg
    python scripts/make_image_folder.py /tmp/f20k --images 20000 --shards /tmp/f20k-shards
    python scripts/make_image_folder.py /tmp/f20k --images 20000 --hf /tmp/f20k-hf

Each class is a smooth random colour pattern; every image is its class pattern, shifted a few
pixels, plus noise: a small convnet learns it in an epoch, and no two files are identical.
Files are written in parallel over all cores; the same arguments give the same bytes.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def class_patterns(classes: int, size: int, seed: int) -> np.ndarray:
    """[classes, size, size, 3] uint8: low-frequency colour blobs, one pattern per class."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((classes, 4, 4, 3))
    idx = np.linspace(0, 3, size)
    i0 = np.floor(idx).astype(int).clip(0, 2)
    t = (idx - i0)[:, None]
    rows = coarse[:, i0] * (1 - t)[None, :, None] + coarse[:, i0 + 1] * t[None, :, None]
    t = (idx - i0)[None, :, None]
    grid = rows[:, :, i0] * (1 - t) + rows[:, :, i0 + 1] * t
    return (grid * 255).astype(np.uint8)


def _write(args: tuple) -> None:
    from PIL import Image

    root, start, stop, classes, size, fmt, seed = args
    patterns = class_patterns(classes, size, seed)
    for n in range(start, stop):
        rng = np.random.default_rng((seed, n))
        label = n % classes
        shift = rng.integers(-size // 8, size // 8 + 1, size=2)
        image = np.roll(patterns[label], tuple(shift), axis=(0, 1)).astype(np.int16)
        image += rng.integers(-24, 25, size=image.shape, dtype=np.int16)
        pixels = image.clip(0, 255).astype(np.uint8)
        path = Path(root) / f"class_{label:03d}" / f"{n:07d}.{fmt}"
        Image.fromarray(pixels).save(path, **({"quality": 90} if fmt == "jpg" else {}))


def make_image_folder(root: Path, images: int, size: int = 32, classes: int = 10,
                      fmt: str = "png", seed: int = 0, workers: int | None = None) -> Path:
    root = Path(root)
    for c in range(classes):
        (root / f"class_{c:03d}").mkdir(parents=True, exist_ok=True)
    workers = workers or len(os.sched_getaffinity(0))
    chunk = max(1, -(-images // (workers * 8)))
    jobs = [(str(root), s, min(s + chunk, images), classes, size, fmt, seed)
            for s in range(0, images, chunk)]
    if workers == 1:
        for job in jobs:
            _write(job)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write, jobs))
    return root


def files_by_number(root: Path) -> list[tuple[Path, str]]:
    """(file, class name) of a generated folder, in the order they were generated (n): the
    classes interleaved, as a shuffled dataset's shards hold them."""
    found = [(p, p.parent.name) for p in Path(root).glob("*/*") if p.is_file()]
    return sorted(found, key=lambda item: item[0].stem)


def to_shards(root: Path, out: Path, per_shard: int = 1000) -> Path:
    """The folder as webdataset tar shards: <n>.<ext> + <n>.cls (the class name)."""
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    files = files_by_number(root)
    for shard, start in enumerate(range(0, len(files), per_shard)):
        with wds.TarWriter(str(out / f"train-{shard:05d}.tar")) as sink:
            for path, label in files[start:start + per_shard]:
                sink.write({"__key__": path.stem, path.suffix[1:]: path.read_bytes(),
                            "cls": label})
    return out


def to_hf(root: Path, out: Path) -> Path:
    """The folder as a Hugging Face dataset saved with save_to_disk (one train split)."""
    from datasets import ClassLabel, Dataset, Features, Image

    files = files_by_number(root)
    names = sorted({label for _, label in files})
    features = Features({"image": Image(), "label": ClassLabel(names=names)})

    def rows():
        for path, label in files:
            yield {"image": {"bytes": path.read_bytes(), "path": None},
                   "label": names.index(label)}
    Dataset.from_generator(rows, features=features).save_to_disk(str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--format", choices=["png", "jpg"], default="png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shards", type=Path, help="also write them as webdataset shards here")
    parser.add_argument("--hf", type=Path, help="also as a Hugging Face dataset (save_to_disk)")
    args = parser.parse_args()
    make_image_folder(args.root, args.images, args.size, args.classes, args.format, args.seed)
    print(f"wrote {args.images:,} {args.size}x{args.size} {args.format} images in "
          f"{args.classes} classes to {args.root}")
    if args.shards:
        print(f"webdataset shards: {to_shards(args.root, args.shards)}")
    if args.hf:
        print(f"Hugging Face dataset: {to_hf(args.root, args.hf)}")


if __name__ == "__main__":
    main()
