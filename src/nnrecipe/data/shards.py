"""data=webdataset: tar shards of samples (key.png + key.cls ...), the format clusters stream.

data.shards is a folder of .tar files, one .tar, or a brace pattern (`/d/train-{0000..0099}.tar`).
The shards are read in name order, so the samples, and the splits carved from them by
data.split_seed, are the same every run.

Each shard is indexed once, over all cores, and the index cached in data.cache_dir (keyed by
the shard's path, size and mtime: a changed shard is indexed again, the others reused): per
sample its key, label, the image member's offset and size in the tar, a content hash, and
whether it decodes. Training then reads a batch's images by offset (os.pread), in DataLoader
workers, like files of a folder: shards of any total size, shuffled per sample, split exactly
over ranks. Why not webdataset's own reader: it streams a shard from start to end, so the
order is shuffled only within a buffer and the ranks' shares must be made equal by repeating
samples; random access to an uncompressed tar is a seek (the index is ~40 lines of tarfile).
Compressed shards (.tar.gz) and remote ones (an URL webdataset opens: https://..., s3://...,
`pipe:aws s3 cp s3://b/train-{0000..0099}.tar -`) have no offsets: data.cache=memory streams
them once through webdataset and decodes them into memory.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from nnrecipe import runtime
from nnrecipe.data.encoded import Part, library_bundle
from nnrecipe.data.index import cache_dir as default_cache_dir
from nnrecipe.data.index import cache_path, check_cache, checked, load_pickle, save_pickle
from nnrecipe.data.splits import warn_skipped
from nnrecipe.errors import UserError

VERSION = 1  # bump when Sample changes: an old shard index is then rebuilt, never misread


class Sample(NamedTuple):
    key: str            # the sample's key in its shard (<shard tag>/<key> once loaded)
    label: str          # the label member's text
    offset: int         # where the image member's bytes start in the shard
    size: int           # and how many
    hash: bytes         # blake2b-128 of those bytes (the leakage check's content hash)
    error: str | None   # why the sample cannot be used; None: it decodes


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
    cache: str = "memory",
    cache_dir: str | None = None,
    num_workers: int | None = None,
):
    if shards in (None, "", "???"):
        raise UserError("data=webdataset needs data.shards=<folder of .tar, a .tar, or a "
                        "brace pattern such as /data/train-{0000..0099}.tar>")
    check_cache(cache)
    given = {"train": ("shards", shards), "val": ("val_shards", val_shards),
             "test": ("test_shards", test_shards)}
    found = {name: urls(key, pattern) for name, (key, pattern) in given.items() if pattern}
    exts = [e.strip().lower() for e in image_key.split(";")]
    samples, reader, note = _samples(found, exts, label_key, cache, cache_dir)
    bad = [s for ss in samples.values() for s in ss if s.error]
    warn_skipped([f"{s.key} ({s.error})" for s in bad], "samples that cannot be used")
    skipped = [{"path": s.key, "label": s.label, "reason": s.error} for s in bad]
    samples = {name: [s for s in ss if not s.error] for name, ss in samples.items()}
    if not samples["train"]:
        raise UserError(f"data.shards={shards}: no usable sample in its shards")
    class_names, target = _classes([s.label for ss in samples.values() for s in ss])
    parts = {name: Part([s.key for s in ss], [target(s.label) for s in ss],
                        [s.hash for s in ss]) for name, ss in samples.items()}
    bundle = library_bundle(parts, reader, Path(found["train"][0]).parent, class_names,
                            in_chans, image_size, seed,
                            {"val": val_fraction, "test": test_fraction}, cache, num_workers)
    bundle.skipped = skipped
    bundle.read_note = note
    return bundle


def _samples(found: dict[str, list[str]], exts: list[str], label_key: str, cache: str,
             cache_dir: str | None):
    """({split: its samples, keys <shard tag>/<key>}, the reader of their image bytes, what
    was done): the shards' cached indexes and their members by offset, or compressed or
    remote shards read whole."""
    files = [f for fs in found.values() for f in fs]
    tag = _shard_tags(files)
    streamed = [f for f in files if _remote(f) or not f.endswith(".tar")]
    if streamed and cache != "memory":
        what = "remote" if _remote(streamed[0]) else "compressed"
        raise UserError(f"data.cache={cache} reads images from local .tar shards by offset, "
                        f"which {what} shards such as {streamed[0]} do not have: use "
                        f"data.cache=memory (streamed once, decoded into memory), or copy "
                        f"uncompressed .tar shards to a local or network file system")
    if streamed:
        samples = {name: _stream(name, fs, exts, label_key, tag) for name, fs in found.items()}
        reader = Memory({s.key: s.data for ss in samples.values() for s in ss})
        return samples, reader, f"{len(files)} shards streamed"
    directory = None if cache == "none" else default_cache_dir(cache_dir)
    index, indexed = index_shards(files, exts, label_key, directory)
    samples, where = {}, {}
    for name, fs in found.items():
        samples[name] = [s._replace(key=f"{tag[f]}/{s.key}") for f in fs for s in index[f]]
        where.update({f"{tag[f]}/{s.key}": (f, s.offset, s.size) for f in fs for s in index[f]})
    return samples, TarMembers(where), (f"{len(files)} shards: {indexed} indexed, "
                                        f"{len(files) - indexed} from the cache")


def _remote(name: str) -> bool:
    """An URL for webdataset's gopen (https://, s3://, pipe:...) rather than a local path."""
    return name.startswith("pipe:") or "://" in name


def _shard_tags(files: list[str]) -> dict[str, str]:
    """The name that stands for each shard in sample keys: its file name, or its path under
    the shards' common folder where names repeat (train/0000.tar and val/0000.tar); repeated
    names among URLs are numbered in order."""
    names = [_shard_name(f) for f in files]
    if len(set(names)) == len(names):
        return dict(zip(files, names, strict=True))
    if any(_remote(f) for f in files):
        return {f: f"{i:05d}-{n}" for i, (f, n) in enumerate(zip(files, names, strict=True))}
    common = os.path.commonpath(files)
    return {f: Path(f).relative_to(common).as_posix() for f in files}


def _shard_name(shard: str) -> str:
    """x.tar of /d/x.tar, https://h/x.tar or pipe:aws s3 cp s3://b/x.tar -"""
    token = next((t for t in reversed(shard.split()) if re.search(r"\.(tar|tgz)", t)), shard)
    return token.rstrip("/").rsplit("/", 1)[-1]


def urls(key: str, pattern: str) -> list[str]:
    """The shard files a data.*shards value names, sorted: the same order every run. Paths are
    made absolute but links kept (a hub snapshot's train-0000.tar links to a blob named by its
    hash: the name says what the file is)."""
    import braceexpand

    if _remote(pattern):  # webdataset opens them; their order is the pattern's
        return list(braceexpand.braceexpand(pattern))
    path = Path(pattern).expanduser()
    if path.is_dir():
        found = sorted(str(p) for p in path.iterdir() if re.search(r"\.(tar|tgz|tar\.gz)$",
                                                                   p.name))
    else:
        named = list(braceexpand.braceexpand(str(path)))
        found = [p for p in named if Path(p).is_file()]
        if found and len(found) < len(named):
            lost = [p for p in named if not Path(p).is_file()]
            raise UserError(f"data.{key}={pattern}: {len(lost)} of the {len(named)} shards it "
                            f"names do not exist (e.g. {lost[0]}): fix the pattern or the files")
    if not found:
        raise UserError(f"data.{key}={pattern}: no .tar shards found there")
    return [os.path.abspath(f) for f in found]


class TarMembers:
    """Keys -> the bytes of their image members, read by offset from the shards (os.pread:
    no shared file position, so threads and forked workers use the same descriptors). The
    offsets live in numpy arrays looked up by sorted key, not a dict of 1M tuples that every
    DataLoader worker would copy as it touches them. At most OPEN shards stay open per
    process: ImageNet's 1,282 shards pass a common limit of 1,024."""

    OPEN = 128

    def __init__(self, where: dict[str, tuple[str, int, int]]):
        keys = np.array([_bytes(k) for k in where], dtype=np.bytes_)  # key -> (shard, offset,
        order = np.argsort(keys)                                         #         size)
        self.keys = keys[order]
        self.shards = sorted({shard for shard, _, _ in where.values()})
        number = {shard: i for i, shard in enumerate(self.shards)}
        columns = np.array([(number[s], o, n) for s, o, n in where.values()], dtype=np.int64)
        self.members = columns.reshape(-1, 3)[order]  # [N, (shard, offset, size)]
        self.fds: dict[int, int] = {}

    def __call__(self, keys: list[str]) -> list[bytes]:
        wanted = np.array([_bytes(k) for k in keys], dtype=np.bytes_)
        at = np.searchsorted(self.keys, wanted).clip(max=len(self.keys) - 1)
        if not bool((self.keys[at] == wanted).all()):
            missing = wanted[self.keys[at] != wanted][0].decode(errors="surrogateescape")
            raise KeyError(f"{missing} is in no indexed shard")
        return [os.pread(self._fd(int(shard)), int(size), int(offset))
                for shard, offset, size in self.members[at]]

    def _fd(self, shard: int) -> int:
        fd = self.fds.pop(shard, None)
        if fd is None:
            if len(self.fds) >= self.OPEN:  # the least recently used one
                os.close(self.fds.pop(next(iter(self.fds))))
            fd = os.open(self.shards[shard], os.O_RDONLY)
        self.fds[shard] = fd  # most recently used last
        return fd

    def __getstate__(self):  # descriptors do not travel to spawned processes: reopened there
        return {**self.__dict__, "fds": {}}


def _bytes(key: str) -> bytes:
    return key.encode(errors="surrogateescape")  # a tar member name that is not UTF-8


class Memory:
    """Keys -> bytes held in memory (compressed shards, decoded once with data.cache=memory)."""

    def __init__(self, data: dict[str, bytes]):
        self.data = data

    def __call__(self, keys: list[str]) -> list[bytes]:
        return [self.data[k] for k in keys]


def index_shards(files: list[str], exts: list[str], label_key: str,
                 directory: Path | None) -> tuple[dict[str, list[Sample]], int]:
    """({shard: its samples}, how many shards were indexed now): from the cache where the
    shard's size and mtime match, indexed afresh (one process per shard, all cores, a
    progress bar) otherwise."""
    from tqdm.auto import tqdm

    cached, todo = {}, []
    for f in files:
        st = os.stat(f)
        stamp = (st.st_size, st.st_mtime_ns, exts, label_key)
        saved = load_pickle(_cache_file(f, directory))
        if saved and saved.get("version") == VERSION and saved["stamp"] == stamp:
            cached[f] = [Sample(*s) for s in saved["samples"]]
        else:
            todo.append((f, stamp))
    bar = tqdm(total=len(todo), desc="indexing shards", unit="shard", disable=None,
               leave=False)
    workers = min(len(todo), runtime.cores())
    jobs = [(f, exts, label_key) for f, _ in todo]
    for (f, stamp), samples in zip(todo, runtime.process_map(_index_shard, jobs, workers),
                                   strict=True):
        cached[f] = samples
        if directory is not None:
            save_pickle(_cache_file(f, directory), {"version": VERSION, "stamp": stamp,
                                                    "samples": [tuple(s) for s in samples]})
        bar.update()
    bar.close()
    return cached, len(todo)


def _cache_file(shard: str, directory: Path | None) -> Path | None:
    return cache_path(Path(shard), directory, "shard") if directory is not None else None


def _index_shard(job) -> list[Sample]:
    """One shard's samples, in the tar's order: webdataset's grouping (a sample is the run of
    members whose names agree up to the first dot of the file name; lower-case extensions)."""
    path, exts, label_key = job
    members: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                parts = _split(m.name) if m.isfile() else None
                if parts:  # what webdataset skips (no extension, __meta__, ._x) is skipped
                    members.setdefault(parts[0], {})[parts[1]] = m
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"{path} is not a readable tar file ({type(e).__name__}: {e})") from e
    samples = []
    with open(path, "rb") as f:
        for key, found in members.items():
            image = next((found[e] for e in exts if e in found), None)
            if image is None or label_key not in found:
                raise UserError(_missing(path, key, image is None, exts, label_key, found))
            label = _read(f, found[label_key]).decode().strip()
            digest, error = checked(_read(f, image), "." + image.name.rsplit(".", 1)[-1].lower())
            samples.append(Sample(key, label, image.offset_data, image.size, digest, error))
    return samples


SAMPLE_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
META_MEMBER = re.compile(r"__[^/]*__($|/)")                 # and its skip_meta


def _split(member: str) -> tuple[str, str] | None:
    """(sample key, lower-case extension) of a member name, as webdataset groups them; None for
    the members it skips."""
    found = SAMPLE_MEMBER.match(member)
    if found is None or META_MEMBER.search(member):
        return None
    return found.group(1), found.group(2).lower()


def _read(f, member: tarfile.TarInfo) -> bytes:
    f.seek(member.offset_data)
    return f.read(member.size)


def _missing(path, key, no_image: bool, exts, label_key, found) -> str:
    what = "image (." + ", .".join(exts) + ")" if no_image else f".{label_key}"
    return (f"sample {key} in {path} has no {what}: set data.image_key / data.label_key to the "
            f"extensions its files use (it has {', '.join(found)})")


class _Streamed(NamedTuple):
    key: str
    label: str
    data: bytes
    hash: bytes
    error: str | None = None


def _stream(split: str, files: list[str], exts: list[str], label_key: str,
            tag: dict[str, str]) -> list[_Streamed]:
    """Every sample of the shards, read start to end by webdataset (compressed ones too)."""
    import webdataset as wds
    from tqdm.auto import tqdm

    key = {"train": "shards"}.get(split, f"{split}_shards")
    out = []
    stream = wds.WebDataset(files, shardshuffle=False, empty_check=False)
    for sample in tqdm(stream, desc=f"reading data.{key}", unit="img", disable=None,
                       leave=False):
        found = [k for k in sample if not k.startswith("__")]
        ext = next((k for k in exts if k in sample), None)
        if ext is None or label_key not in sample:
            raise UserError(f"data.{key}: " + _missing(sample["__url__"], sample["__key__"],
                                                       ext is None, exts, label_key, found))
        image = sample[ext]
        url = sample["__url__"]
        out.append(_Streamed(f"{tag[url if _remote(url) else os.path.abspath(url)]}/"
                             f"{sample['__key__']}", sample[label_key].decode().strip(),
                             image, *checked(image, f".{ext}")))
    return out


def _classes(labels: list[str]):
    """(class names, label text -> class index). Integers (the convention: key.cls holds "3",
    or "03"): classes 0..max. Text: the sorted names."""
    if all(v.isdigit() for v in labels):
        return [str(c) for c in range(max(int(v) for v in labels) + 1)], int
    names = sorted(set(labels))
    return names, {c: i for i, c in enumerate(names)}.__getitem__
