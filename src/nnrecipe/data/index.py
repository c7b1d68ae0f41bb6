"""The folder index: what every image file under a folder is, read once and cached on disk.

Without it, every start decoded every file on one thread to find the broken ones (minutes at
100k images, repeated for every sweep trial) and the preflight hashed every file again. The
index keeps per file: size and mtime (to see what changed), a content hash (the leakage check),
whether it decodes (or why not) and its image size and mode. The first start builds it over
all cores; later starts list the folder, compare sizes and mtimes, and re-read only the files
that changed or appeared.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from nnrecipe import runtime
from nnrecipe.data.images import IMG_EXTENSIONS
from nnrecipe.errors import UserError

VERSION = 1  # bump when Entry changes: an old cache is then rebuilt, never misread


class Entry(NamedTuple):
    size: int
    mtime_ns: int
    hash: bytes            # blake2b-128 of the file's bytes (checks.data.content_hashes agrees)
    error: str | None      # why it cannot be used as an image; None: it decodes
    width: int
    height: int
    mode: str


@dataclass
class Index:
    root: Path
    entries: dict[str, Entry]  # posix path relative to root -> Entry
    reread: int                # files read this time (0: the cache held everything)
    cache_file: Path | None


CACHES = ("index", "memory", "none")  # data.cache: how images are kept between starts


def check_cache(cache: str) -> None:
    if cache not in CACHES:
        raise UserError(f"data.cache={cache} must be one of {', '.join(CACHES)}")


def cache_dir(configured: str | None = None) -> Path:
    """data.cache_dir, else $NNRECIPE_CACHE_DIR, else ~/.cache/nnrecipe."""
    chosen = configured or os.environ.get("NNRECIPE_CACHE_DIR") or "~/.cache/nnrecipe"
    return Path(chosen).expanduser()


def cache_path(root: Path, directory: Path, kind: str = "index") -> Path:
    """One file per folder, keyed by its absolute path; the folder's name keeps it readable."""
    key = hashlib.blake2b(str(root).encode(), digest_size=8).hexdigest()
    return directory / f"{root.name or 'root'}-{key}.{kind}.pkl"


def load_index(root: Path, directory: Path | None, workers: int = 0) -> Index:
    """The index of every image file under `root`: from the cache where size and mtime still
    match, read afresh (in parallel) otherwise. `directory` None: no cache, read everything."""
    root = Path(root).resolve()
    listing = list_images(root)
    cache_file = cache_path(root, directory) if directory is not None else None
    cached = _read_cache(cache_file)
    entries = {rel: e for rel, e in cached.items()
               if rel in listing and (e.size, e.mtime_ns) == listing[rel]}
    todo = [rel for rel in listing if rel not in entries]
    entries.update(read_entries(root, todo, listing, workers))
    entries = dict(sorted(entries.items()))
    if cache_file is not None and (todo or len(entries) != len(cached)):
        _write_cache(cache_file, entries)
    return Index(root, entries, len(todo), cache_file)


def list_images(root: Path) -> dict[str, tuple[int, int]]:
    """{relative posix path: (size, mtime_ns)} of the image files under root (any depth), hidden
    folders left out (.ipynb_checkpoints, .thumbnails: copies and previews, not samples).
    os.scandir: its entries carry the stat on most systems, ~10x faster than Path.rglob+stat."""
    found, stack = {}, [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as it:
            for e in it:
                if e.is_dir(follow_symlinks=True):
                    if not e.name.startswith("."):
                        stack.append((e.path, f"{prefix}{e.name}/"))
                elif _suffix(e.name) in IMG_EXTENSIONS:
                    try:
                        st = e.stat(follow_symlinks=True)
                        found[prefix + e.name] = (st.st_size, st.st_mtime_ns)
                    except OSError:  # a broken link: read_entry says so, once
                        found[prefix + e.name] = (-1, 0)
    return found


def _suffix(name: str) -> str:
    """Path(name).suffix.lower() without building a Path (100k of them cost a second)."""
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def read_entries(root: Path, rels: list[str], listing: dict, workers: int) -> dict[str, Entry]:
    """Entries for `rels`, read over `workers` processes (0: all cores) with a progress bar."""
    if not rels:
        return {}
    from tqdm.auto import tqdm

    chunk = 256
    # each job carries only its own files' stats: the whole listing, pickled to every job,
    # made the parent the bottleneck at 100k files
    jobs = [(str(root), [(r, *listing[r]) for r in rels[i:i + chunk]])
            for i in range(0, len(rels), chunk)]
    bar = tqdm(total=len(rels), desc=f"indexing {root.name}/", unit="img", disable=None,
               leave=False)
    out = {}
    # one chunk of files: a pool's start costs more than it saves
    workers = min(workers or runtime.cores(), len(jobs))
    for part in runtime.process_map(_read_chunk, jobs, workers):
        out.update(part)
        bar.update(len(part))
    bar.close()
    return out


def _read_chunk(job) -> dict[str, Entry]:
    root, files = job
    return {rel: read_entry(Path(root) / rel, size, mtime) for rel, size, mtime in files}


def read_entry(path: Path, size: int, mtime_ns: int) -> Entry:
    """Hash the bytes and decode them once: a broken file is found here, never in a batch."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return Entry(size, mtime_ns, b"", f"cannot be read ({e.strerror})", 0, 0, "")
    digest = hashlib.blake2b(data, digest_size=16).digest()
    error, *image = decode_check(data, path.suffix.lower())
    return Entry(size, mtime_ns, digest, error, *image)


def checked(data: bytes, suffix: str = "") -> tuple[bytes, str | None]:
    """(blake2b-128 of the bytes: the leakage check's content hash, why they are not a usable
    image or None): what every index keeps per sample, for files, shard members and rows."""
    return hashlib.blake2b(data, digest_size=16).digest(), decode_check(data, suffix)[0]


def decode_check(data: bytes, suffix: str) -> tuple[str | None, int, int, str]:
    """(why the bytes cannot be used as an image or None, width, height, mode)."""
    if not data:
        return "empty file", 0, 0, ""
    try:
        with _open(data, suffix) as image:
            width, height, mode = *image.size, image.mode
            if image.format == "JPEG":  # decode at 1/8 scale: still reads every byte, 5x faster
                image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
            image.load()
    except Exception as e:  # PIL raises many types for bad files; all mean "unusable"
        return f"not a readable image ({type(e).__name__}: {e})", 0, 0, ""
    return None, width, height, mode


def check_encoded(read, n: int, desc: str) -> list[tuple[bytes, str | None]]:
    """(blake2b-128 of the bytes, why they are not a usable image or None) for items [0, n)
    whose encoded bytes `read(start, stop)` returns: what the index keeps for a file, for a
    library's rows. Read here, hashed and decoded over all cores, with a progress bar."""
    from tqdm.auto import tqdm

    starts = range(0, n, 256)
    bar = tqdm(total=n, desc=desc, unit="img", disable=None, leave=False)
    out = []
    jobs = (read(start, min(start + 256, n)) for start in starts)
    for part in runtime.process_map(_check_chunk, jobs, min(runtime.cores(), len(starts))):
        out += part
        bar.update(len(part))
    bar.close()
    return out


def _check_chunk(chunk: list[bytes]) -> list[tuple[bytes, str | None]]:
    return [checked(data) for data in chunk]


FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
           ".tif": "TIFF", ".tiff": "TIFF", ".ppm": "PPM", ".pgm": "PPM"}


def _open(data: bytes, suffix: str):
    """PIL's Image.open, told the format the suffix names first (probing every format took a
    third of the index's time); a file whose suffix lies still opens, by probing."""
    from io import BytesIO

    from PIL import Image

    try:
        return Image.open(BytesIO(data), formats=[FORMATS[suffix]] if suffix in FORMATS else None)
    except Exception:
        return Image.open(BytesIO(data))


def _read_cache(cache_file: Path | None) -> dict[str, Entry]:
    saved = load_pickle(cache_file)
    if saved and saved.get("version") == VERSION:
        return {rel: Entry(*e) for rel, e in saved["entries"].items()}
    return {}


def _write_cache(cache_file: Path, entries: dict[str, Entry]) -> None:
    save_pickle(cache_file, {"version": VERSION,
                             "entries": {k: tuple(e) for k, e in entries.items()}})


def load_pickle(cache_file: Path | None):
    """A cache file's content, or None (absent, half-written, from another version: rebuilt,
    never trusted)."""
    if cache_file is None or not cache_file.exists():
        return None
    try:
        with open(cache_file, "rb") as f:
            return pickle.load(f)
    except Exception:
        return None


def save_pickle(cache_file: Path, value) -> None:
    """Atomic (write, then rename): parallel sweep trials may index the same folder at once."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(cache_file)
