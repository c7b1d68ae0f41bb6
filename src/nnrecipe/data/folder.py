"""data=image_folder: root/<class>/*.png, or root/{train,val,test}/<class>/*.png.

The files come from the folder index (nnrecipe.data.index): with the cache, a second start
reads no image, only the folder's listing. The splits are drawn from the index's entries in a
fixed order, so they are the same with and without the cache.
"""

from __future__ import annotations

from pathlib import Path

from nnrecipe.data.index import cache_dir as default_cache_dir
from nnrecipe.data.index import check_cache, load_index
from nnrecipe.data.splits import DataBundle, FileSplit, warn_skipped
from nnrecipe.errors import UserError


def image_folder(
    root: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    image_size: int = 64,
    in_chans: int = 3,
    num_workers: int | None = None,
    cache: str = "index",
    cache_dir: str | None = None,
):
    """Images in class subfolders, split by `seed` (data.split_seed) where not pre-split."""
    root = _check_root(root)
    check_cache(cache)
    presplit = (root / "train").is_dir()
    train_dir = root / "train" if presplit else root
    # hidden folders (.ipynb_checkpoints, .git) are no class
    class_names = sorted(p.name for p in train_dir.iterdir()
                         if p.is_dir() and not p.name.startswith("."))
    if not class_names:
        raise UserError(
            f"data.root={train_dir} holds no class subfolders: expected "
            f"{train_dir}/<class name>/<image files>"
        )
    directory = None if cache == "none" else default_cache_dir(cache_dir)
    index = load_index(root, directory, workers=0)
    prefixes = {"train": "train/" if presplit else ""}
    for name in ("val", "test"):
        if presplit and (root / name).is_dir():
            prefixes[name] = f"{name}/"
    members = {name: _members(index.entries, prefix, class_names)
               for name, prefix in prefixes.items()}
    warn_skipped([str(root / rel) for rel, e in index.entries.items() if e.error],
                 "unreadable image files")
    if not members["train"]:
        raise UserError(f"data.root={train_dir} holds no readable image files in its class folders")
    _carve(members, [n for n in ("val", "test") if n not in members],
           {"val": val_fraction, "test": test_fraction}, seed)
    splits = [FileSplit(root, [r for r, _ in members[n]], [t for _, t in members[n]],
                        hashes=[index.entries[r].hash for r, _ in members[n]])
              for n in ("train", "val", "test")]
    bundle = DataBundle(*splits, class_names=class_names, in_chans=in_chans,
                        image_size=image_size, num_workers=num_workers,
                        read_note=_read_note(index))
    if cache == "memory":
        from nnrecipe.data.memory import to_memory

        bundle = to_memory(bundle, index, directory)
    return bundle


def _read_note(index) -> str:
    if index.cache_file is None:
        return f"{len(index.entries):,} files read (data.cache=none: no index kept)"
    done = "built" if index.reread == len(index.entries) else "reused"
    return (f"index {done}: {index.reread:,} of {len(index.entries):,} files read "
            f"({index.cache_file})")


def _check_root(root) -> Path:
    if root in (None, "", "???"):
        raise UserError("data=image_folder needs data.root=/path/to/images (one folder per class)")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"data.root={root} does not exist or is not a folder")
    return root


def _members(entries: dict, prefix: str, class_names: list[str]) -> list[tuple[str, int]]:
    """(relative path, label) of the readable images under prefix<class>/, by class then path:
    the order the split is drawn in, fixed whatever order the files were indexed in."""
    label_of = {name: label for label, name in enumerate(class_names)}
    found = []
    for rel, entry in entries.items():
        if entry.error or not rel.startswith(prefix):
            continue
        parts = rel[len(prefix):].split("/")
        if len(parts) >= 2 and parts[0] in label_of:  # files beside the class folders: no label
            found.append((rel, label_of[parts[0]]))
    found.sort(key=lambda m: (m[1], m[0]))
    return found


def _carve(members: dict, missing: list[str], fractions: dict, seed: int) -> None:
    """Split the splits a pre-split folder lacks out of train, stratified by class."""
    from nnrecipe.data.sources import stratified_split

    train = members["train"]
    train_idx, *carved = stratified_split([t for _, t in train], [fractions[n] for n in missing],
                                          seed)
    for name, idx in zip(missing, carved, strict=True):
        members[name] = [train[i] for i in idx]
    members["train"] = [train[i] for i in train_idx]
