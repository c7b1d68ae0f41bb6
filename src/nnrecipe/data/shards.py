"""data=webdataset: tar shards of samples (key.png + key.cls ...), the format clusters stream.

data.shards is a folder of .tar files, one .tar, or a brace pattern (`/d/train-{0000..0099}.tar`).
The shards are read in name order, so the samples, and the splits carved from them by
data.split_seed, are the same every run. `webdataset` is imported only here.
"""

from __future__ import annotations

from pathlib import Path

from nnrecipe.data.encoded import Part, memory_bundle
from nnrecipe.errors import UserError


def webdataset_shards(
    shards: str | None = None,
    val_shards: str | None = None,
    test_shards: str | None = None,
    image_key: str = "png;jpg;jpeg;webp",
    label_key: str = "cls",
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    image_size: int = 32,
    in_chans: int = 3,
):
    if shards in (None, "", "???"):
        raise UserError("data=webdataset needs data.shards=<folder of .tar, a .tar, or a "
                        "brace pattern such as /data/train-{0000..0099}.tar>")
    given = {"train": ("shards", shards), "val": ("val_shards", val_shards),
             "test": ("test_shards", test_shards)}
    read = {name: _read(key, pattern, image_key.split(";"), label_key)
            for name, (key, pattern) in given.items() if pattern}
    class_names = _class_names([v for _, _, labels in read.values() for v in labels])
    position = {c: i for i, c in enumerate(class_names)}
    parts = {}
    for name, (keys, images, labels) in read.items():
        parts[name] = Part(keys, [position[v] for v in labels],
                           lambda idx, images=images: [images[i] for i in idx])
    return memory_bundle(parts, class_names, in_chans, image_size, seed,
                         {"val": val_fraction, "test": test_fraction})


def urls(key: str, pattern: str) -> list[str]:
    """The shard files a data.*shards value names, sorted: the same order every run."""
    import braceexpand

    path = Path(pattern).expanduser()
    if path.is_dir():
        found = sorted(str(p) for p in path.glob("*.tar"))
    else:
        found = [p for p in braceexpand.braceexpand(str(path)) if Path(p).is_file()]
    if not found:
        raise UserError(f"data.{key}={pattern}: no .tar shards found there")
    return found


def _read(key: str, pattern: str, image_keys: list[str], label_key: str):
    """(sample keys, encoded image bytes, label texts) of every sample in the shards."""
    import webdataset as wds
    from tqdm.auto import tqdm

    keys, images, labels = [], [], []
    stream = wds.WebDataset(urls(key, pattern), shardshuffle=False, empty_check=False)
    for sample in tqdm(stream, desc=f"reading data.{key}", unit="img", disable=None,
                       leave=False):
        image = next((sample[k] for k in image_keys if k in sample), None)
        if image is None or label_key not in sample:
            missing = "an image (" + ", ".join(image_keys) + ")" if image is None else label_key
            raise UserError(f"data.{key}: sample {sample['__key__']} in {sample['__url__']} "
                            f"has no {missing}: set data.image_key / data.label_key to the "
                            f"extensions its files use (it has {', '.join(_exts(sample))})")
        keys.append(f"{Path(sample['__url__']).name}/{sample['__key__']}")
        images.append(image)
        labels.append(sample[label_key].decode().strip())
    return keys, images, labels


def _exts(sample: dict) -> list[str]:
    return [k for k in sample if not k.startswith("__")]


def _class_names(labels: list[str]) -> list[str]:
    """Integer labels (the convention: key.cls holds "3"): 0..max. Text: sorted names."""
    if all(v.isdigit() for v in labels):
        return [str(c) for c in range(max(int(v) for v in labels) + 1)]
    return sorted(set(labels))
