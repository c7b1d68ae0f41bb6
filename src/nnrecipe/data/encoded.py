"""Encoded images (PNG/JPEG bytes) from a dataset library -> a DataBundle.

data=hf and data=webdataset both hold image files' bytes plus a label per sample. A split the
dataset lacks is carved from its train split, stratified, by data.split_seed. Then, as for an
image folder, data.cache chooses how training reads them:
- index (or none): DataLoader workers fetch each batch's bytes from the library's files (tar
  members by offset, Arrow rows) and decode them: any size, memory holds only the keys;
- memory: decoded once, over all cores, into a tensor at image_size (CIFAR-size sets).
The decoder is the image folders' (the same pixels for the same file).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nnrecipe.data.splits import DataBundle, FileSplit


@dataclass
class Part:
    """One split as the library gives it: sample keys (their identity) and labels."""

    keys: list[str]
    labels: list[int]
    hashes: list[bytes]  # content hash per sample (the leakage check's)


def library_bundle(parts: dict[str, Part], reader: Callable[[list[str]], list[bytes]],
                   root: Path, class_names: list[str], in_chans: int, image_size: int,
                   seed: int, fractions: dict[str, float], cache: str,
                   num_workers: int | None) -> DataBundle:
    """FileSplits over `reader` (keys -> bytes), the missing val/test carved from train; in
    memory with cache=memory (`cache`: checked by the source, before it loaded anything)."""
    from nnrecipe.data.sources import stratified_split

    train = parts["train"]
    missing = [n for n in ("val", "test") if n not in parts]
    train_idx, *carved = stratified_split(train.labels, [fractions[n] for n in missing], seed)
    for name, idx in zip(["train", *missing], [train_idx, *carved], strict=True):
        parts[name] = Part([train.keys[i] for i in idx], [train.labels[i] for i in idx],
                           [train.hashes[i] for i in idx])
    splits = [FileSplit(root, parts[n].keys, parts[n].labels, hashes=parts[n].hashes,
                        reader=reader) for n in ("train", "val", "test")]
    bundle = DataBundle(*splits, class_names=class_names, in_chans=in_chans,
                        image_size=image_size, num_workers=num_workers)
    if cache == "memory":
        from nnrecipe.data.memory import to_memory

        bundle = to_memory(bundle)
    return bundle
