"""data=hf: a Hugging Face `datasets` dataset, from the hub or from local files.

data.path is a hub name (`uoft-cs/cifar10`: downloaded once, then datasets' cache) or a local
folder: a save_to_disk() output, parquet files (train-*.parquet, test-*.parquet...) or an image
folder. The dataset's own train/validation/test splits are used; those it lacks are carved
from train. datasets keeps them as memory-mapped Arrow files, so with data.cache=index the
workers read each batch's rows from those (any size); data.cache=memory decodes them once.
`datasets` is imported only here: 3 s that other runs do not pay.
"""

from __future__ import annotations

import os
from pathlib import Path

from nnrecipe.data.encoded import Part, library_bundle
from nnrecipe.data.index import cache_dir as default_cache_dir
from nnrecipe.data.index import cache_path, check_cache, check_encoded, load_pickle, save_pickle
from nnrecipe.data.splits import warn_skipped
from nnrecipe.errors import UserError

SPLIT_NAMES = {"train": ("train",), "val": ("validation", "valid", "val", "dev"),
               "test": ("test",)}


def hf_dataset(
    path: str | None = None,
    name: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    image_size: int = 32,
    in_chans: int = 3,
    cache: str = "memory",
    cache_dir: str | None = None,
    num_workers: int | None = None,
):
    if path in (None, "", "???"):
        raise UserError("data=hf needs data.path=<hub name or local folder>")
    check_cache(cache)
    dataset = _load(path, name)
    directory = None if cache == "none" else default_cache_dir(cache_dir)
    parts, tables, skipped, class_names, checked = {}, {}, [], None, 0
    for ours, theirs in SPLIT_NAMES.items():
        found = next((dataset[s] for s in theirs if s in dataset), None)
        if found is not None:
            labels, tables[ours], class_names = _labels(found, image_column, label_column,
                                                        class_names)
            checks, fresh = _checks(found, tables[ours], ours, image_column, path, directory)
            parts[ours] = _usable(ours, labels, checks, class_names, skipped)
            checked += len(checks) if fresh else 0
    if "train" not in parts:
        raise UserError(f"data.path={path} has no 'train' split (it has {', '.join(dataset)}): "
                        f"nnrecipe trains on 'train' and carves the splits it lacks from it")
    warn_skipped([f"{s['path']} ({s['reason']})" for s in skipped], "images that cannot be used")
    bundle = library_bundle(parts, Rows(tables, image_column), Path(path), class_names,
                            in_chans, image_size, seed,
                            {"val": val_fraction, "test": test_fraction}, cache, num_workers)
    bundle.skipped = skipped
    rows = sum(len(t) for t in tables.values())
    bundle.read_note = (f"rows checked: {checked:,} of {rows:,}"
                        + (" (the others from the cache)" if checked < rows else ""))
    return bundle


def _checks(ds, encoded, split: str, column: str, path: str, directory: Path | None):
    """([(content hash, why not a usable image) per row], whether they were computed now), as
    the folder index has per file: computed once over all cores, cached in data.cache_dir while
    datasets' Arrow files of the split are unchanged (a dataset held only in memory is checked
    at each start)."""
    files = [f["filename"] for f in ds.cache_files]
    stamp = (len(ds), column, [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files])
    cache_file = (cache_path(Path(os.path.abspath(path)) / split, directory, f"hf-{column}")
                  if directory is not None and files else None)
    saved = load_pickle(cache_file)
    if saved and saved["stamp"] == stamp:
        return saved["checks"], False
    rows = Rows({split: encoded}, column)
    checks = check_encoded(lambda a, b: rows([f"{split}/{i}" for i in range(a, b)]), len(ds),
                           f"checking {split} images")
    if cache_file is not None:
        save_pickle(cache_file, {"stamp": stamp, "checks": checks})
    return checks, True


def _usable(split: str, labels: list[int], checks, class_names: list[str],
            skipped: list[dict]) -> Part:
    """The split's rows (keys `<split>/<row>`) but those whose image cannot be used (added to
    `skipped`), with their content hashes."""
    name = {c: n for c, n in enumerate(class_names)}  # a label out of range: build_data says so
    skipped += [{"path": f"{split}/{i}", "label": name.get(labels[i], str(labels[i])),
                 "reason": error} for i, (_, error) in enumerate(checks) if error is not None]
    keep = [i for i, (_, error) in enumerate(checks) if error is None]
    return Part([f"{split}/{i}" for i in keep], [labels[i] for i in keep],
                [checks[i][0] for i in keep])


def _load(path: str, name: str | None):
    """A DatasetDict, whatever the source. A hub name without network: one clear message."""
    import datasets

    local = Path(path).expanduser()
    if local.exists():
        saved = any((local / f).exists() for f in ("dataset_dict.json", "state.json"))
        try:
            ds = datasets.load_from_disk(str(local)) if saved else datasets.load_dataset(
                str(local), name)
        except Exception as e:
            raise UserError(f"data.path={local}: could not load it with datasets "
                            f"({type(e).__name__}: {e})") from e
        return ds if isinstance(ds, datasets.DatasetDict) else datasets.DatasetDict(train=ds)
    if path.startswith(("/", ".", "~")):
        raise UserError(f"data.path={path} does not exist (a local folder was meant?)")
    try:
        return datasets.load_dataset(path, name)
    except Exception as e:  # no network, a private set, a typo: the hub says which
        raise UserError(
            f"could not load data.path={path} from the Hugging Face hub ({type(e).__name__}: "
            f"{str(e)[:300]}). Without network access: save it where you have network "
            f"(datasets.load_dataset({path!r}).save_to_disk(DIR)), copy DIR here and set "
            f"data.path=DIR (HF_HUB_OFFLINE=1 makes a missing hub set fail at once)."
        ) from e


def _labels(ds, image_column: str, label_column: str, class_names):
    """The split's labels, its image column as encoded bytes (decoded by nnrecipe, not PIL via
    datasets, so that pixels agree with an image folder of the same files) and the classes."""
    from datasets import ClassLabel, Image

    for key, column in (("image_column", image_column), ("label_column", label_column)):
        if column not in ds.column_names:
            raise UserError(f"data.{key}={column} is not a column of the dataset: it has "
                            f"{', '.join(ds.column_names)}")
    feature = ds.features[label_column]
    labels = ds[label_column]
    if isinstance(feature, ClassLabel):
        class_names = class_names or list(feature.names)
    elif labels and isinstance(labels[0], str):  # class names as text: sorted, as folders are
        class_names = class_names or sorted(set(labels))
        position = {c: i for i, c in enumerate(class_names)}
        labels = [position[v] for v in labels]
    else:
        class_names = class_names or [str(c) for c in range(max(labels) + 1)]
    if not isinstance(ds.features[image_column], Image):
        raise UserError(f"data.image_column={image_column} holds {ds.features[image_column]}, "
                        f"not images")
    encoded = ds.cast_column(image_column, Image(decode=False)).select_columns([image_column])
    return list(labels), encoded, class_names


class Rows:
    """Keys `<split>/<row>` -> the encoded image bytes of those rows of the Arrow tables (one
    read per split and batch; an image stored as a path is read from its file)."""

    def __init__(self, tables: dict, column: str):
        self.tables, self.column = tables, column

    def __call__(self, keys: list[str]) -> list[bytes]:
        out: list[bytes | None] = [None] * len(keys)
        wanted: dict[str, list[tuple[int, int]]] = {}
        for k, key in enumerate(keys):
            split, row = key.split("/")
            wanted.setdefault(split, []).append((k, int(row)))
        for split, items in wanted.items():
            rows = self.tables[split][[row for _, row in items]][self.column]
            for (k, _), r in zip(items, rows, strict=True):
                out[k] = r["bytes"] if r["bytes"] is not None else Path(r["path"]).read_bytes()
        return out
