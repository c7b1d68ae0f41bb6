"""The folder index: built once, reused while the folder is unchanged, updated file by file."""

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from nnrecipe.data import build_data
from nnrecipe.data.index import load_index


def write_folder(root, classes=("cat", "dog"), per_class=12, size=10):
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (rng.random((size, size, 3)) * 60 + 150 * k).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def folder_cfg(root, **kw):
    return OmegaConf.create({"_target_": "nnrecipe.data.sources.image_folder", "root": str(root),
                             "batch_size": 4, "image_size": 8, "num_workers": 0,
                             "val_fraction": 0.25, "test_fraction": 0.25, **kw})


def touch_later(path):
    st = path.stat()  # a new mtime even on file systems with coarse timestamps
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_index_is_reused_and_updates_only_what_changed(tmp_path):
    root = write_folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    first = load_index(root, cache)
    assert first.reread == 24 and first.cache_file.exists()
    entry = first.entries["cat/0.png"]
    assert (entry.width, entry.height, entry.mode, entry.error) == (10, 10, "RGB", None)
    assert entry.hash == hashlib.blake2b((root / "cat/0.png").read_bytes(), digest_size=16).digest()
    assert load_index(root, cache).reread == 0  # unchanged: no image read

    Image.new("RGB", (7, 5)).save(root / "dog" / "new.png")          # added
    (root / "cat" / "1.png").unlink()                               # deleted
    Image.new("L", (3, 3)).save(root / "cat" / "2.png")              # modified
    touch_later(root / "cat" / "2.png")
    again = load_index(root, cache)
    assert again.reread == 2 and len(again.entries) == 24
    assert "cat/1.png" not in again.entries
    assert again.entries["cat/2.png"].mode == "L" and again.entries["dog/new.png"].width == 7
    assert load_index(root, cache).reread == 0


def test_parallel_index_equals_the_serial_one(tmp_path):
    root = write_folder(tmp_path / "imgs", per_class=300, size=4)  # > one chunk of 256
    serial = load_index(root, None, workers=1).entries
    assert load_index(root, None, workers=2).entries == serial


def test_unreadable_file_is_read_once_and_named_in_one_warning(tmp_path, monkeypatch):
    import nnrecipe.data.index as index

    root = write_folder(tmp_path / "imgs")
    (root / "cat" / "broken.png").write_text("not an image")
    reads = []
    real = index.read_entry
    monkeypatch.setattr(index, "read_entry", lambda path, *a: reads.append(path) or real(path, *a))
    for expected_reads in (25, 0):  # the second start does not try to decode it again
        reads.clear()
        with pytest.warns(UserWarning, match="broken.png") as caught:
            data = build_data(folder_cfg(root), seed=0)
        assert len([w for w in caught if "unreadable" in str(w.message)]) == 1
        assert len(reads) == expected_reads
    assert sum(len(s) for s in data.splits.values()) == 24


def test_splits_are_the_same_with_and_without_the_cache(tmp_path):
    root = write_folder(tmp_path / "imgs")
    runs = [build_data(folder_cfg(root, cache=c, cache_dir=str(tmp_path / "c")), seed=0)
            for c in ("none", "index", "index")]
    for a in runs[1:]:
        for name in ("train", "val", "test"):
            assert a.splits[name].paths == runs[0].splits[name].paths
        assert a.split_hash == runs[0].split_hash
    assert not (tmp_path / "c").exists() or len(list((tmp_path / "c").iterdir())) == 1
    other = build_data(folder_cfg(root, split_seed=1, cache="none"), seed=0)
    assert other.split_hash != runs[0].split_hash


def test_file_splits_carry_the_content_hashes_the_leakage_check_computes(tmp_path):
    from nnrecipe.checks.data import content_hashes

    root = write_folder(tmp_path / "imgs")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing unreadable here: no warning
        data = build_data(folder_cfg(root), seed=0)
    for split in data.splits.values():
        plain = type(split)(split.root, split.paths, split.targets)  # hashes=None: read files
        assert split.hashes == content_hashes(plain)


def test_file_batches_reuse_their_workers_and_leave_the_global_rng_alone(tmp_path):
    import torch

    from nnrecipe.data import iterate_batches
    from nnrecipe.data.batches import _LOADERS

    data = build_data(folder_cfg(write_folder(tmp_path / "imgs"), num_workers=2), seed=0)
    split = data.train
    epochs = []
    for _ in range(2):
        state = torch.get_rng_state()
        g = torch.Generator().manual_seed(1)
        batches = list(iterate_batches(split, 5, True, g, "cpu", data.num_workers))
        assert torch.equal(torch.get_rng_state(), state)  # the workers' seed: not global
        epochs.append(torch.cat([y for _, y in batches]))
        assert batches[0][0].shape == (5, 3, 8, 8) and batches[0][0].dtype == torch.float32
    assert torch.equal(epochs[0], epochs[1])  # the same generator seed: the same order
    assert sorted(epochs[0].tolist()) == sorted(split.targets)
    (loader, _), = [v for k, v in _LOADERS.items() if k[0] == id(split)]  # one for both epochs
    assert loader._iterator is not None and loader._iterator._persistent_workers
    outer = iterate_batches(split, 5, device="cpu", num_workers=2)
    first = next(outer)
    inner = list(iterate_batches(split, 5, device="cpu", num_workers=2))  # nested: own loader
    rest = list(outer)
    assert torch.equal(torch.cat([first[1], *[y for _, y in rest]]),
                       torch.cat([y for _, y in inner]))


def test_cache_memory_trains_exactly_as_the_file_path(run_train, tmp_path):
    """The same pixels, order, mean/std and split: the same metrics, to the last bit."""
    import json

    root = write_folder(tmp_path / "imgs", per_class=16)
    runs = {}
    for cache in ("index", "memory", "memory"):  # the second memory run: pixels from disk
        common = ("data=image_folder", f"data.root={root}", "data.image_size=8",
                  "data.batch_size=8", "data.num_workers=0", "model=linear",
                  "trainer.max_epochs=2", f"data.cache={cache}")
        run_dir = tmp_path / f"run-{cache}-{len(runs)}"
        run_train(*common, run_dir=run_dir)
        runs[len(runs)] = json.loads((run_dir / "metrics.json").read_text())
    file_run, *memory_runs = runs.values()
    for run in memory_runs:
        assert run["summary"] == file_run["summary"] and run["history"] == file_run["history"]
    cache_files = list(Path(os.environ["NNRECIPE_CACHE_DIR"]).glob("imgs-*.pixels-v*-3x8.pkl"))
    assert len(cache_files) == 1


def test_cache_memory_refuses_a_folder_that_does_not_fit(tmp_path, monkeypatch):
    import nnrecipe.data.memory as memory
    from nnrecipe.errors import UserError

    root = write_folder(tmp_path / "imgs")
    monkeypatch.setattr(memory, "machine_memory", lambda: 2**20)  # a 1 MiB machine
    with pytest.raises(UserError, match="data.cache=memory: 24 images at 64x64 need"):
        build_data(folder_cfg(root, cache="memory", image_size=64), seed=0)


def test_16_bit_and_float_images_are_scaled_not_clipped_to_white():
    """PIL's convert() clips 16-bit pixels at 255: a 16-bit PNG trained as a white image.
    Training and the audit scale them from their full range."""
    import io

    import numpy as np
    from PIL import Image

    from nnrecipe.audit.pool import _decode
    from nnrecipe.data.images import decode_resized

    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    grey, float01 = io.BytesIO(), io.BytesIO()
    Image.fromarray(ramp).save(grey, "PNG")
    Image.fromarray((ramp / 65535).astype(np.float32), "F").save(float01, "TIFF")
    for data in (grey.getvalue(), float01.getvalue()):
        for chans in (3, 1):
            x = decode_resized(data, chans, None, fast=True).float()
            assert abs(x.mean().item() - ramp.mean() / 257) < 1, x.mean()
        thumb = _decode(data, "RGB", 32, 32)["thumb"]
        assert abs(thumb.mean() - ramp.mean() / 257) < 1


def test_hidden_folders_are_neither_classes_nor_samples(tmp_path):
    """Jupyter's .ipynb_checkpoints beside the classes, a viewer's .thumbnails inside one:
    copies and previews, which would add a class or leak copies across splits."""
    from nnrecipe.audit.pool import build_pool

    root = write_folder(tmp_path / "imgs")
    write_folder(root / ".ipynb_checkpoints", classes=("cat",), per_class=3)
    write_folder(root / "cat" / ".thumbnails", classes=("small",), per_class=3)
    data = build_data(folder_cfg(root), seed=0)
    assert data.class_names == ["cat", "dog"]
    assert sum(len(s) for s in data.splits.values()) == 24
    assert build_pool(data, thumb_size=8, progress=False).unreadable == []


def test_the_run_log_says_what_the_data_is_and_what_the_index_did(tmp_path, caplog):
    import logging

    root = write_folder(tmp_path / "imgs")
    cfg = folder_cfg(root, cache_dir=str(tmp_path / "c"))
    lines = []
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="nnrecipe"):
            build_data(cfg.copy(), seed=0)
        lines += [r.getMessage() for r in caplog.records if r.getMessage().startswith("data:")]
    assert "24 samples (train 12 · val 6 · test 6), 2 classes, 3x8x8 images" in lines[0]
    assert "index built: 24 of 24 files read" in lines[0]
    assert "index reused: 0 of 24 files read" in lines[1]


def test_a_file_name_that_is_not_utf8_is_read_like_any_other(tmp_path):
    """Linux file names are bytes: one that is not UTF-8 reaches Python with surrogates."""
    root = write_folder(tmp_path / "imgs")
    odd = os.fsencode(root / "cat") + b"/caf\xe9.png"  # Latin-1, as old cameras wrote
    os.rename(root / "cat" / "0.png", odd)
    data = build_data(folder_cfg(root), seed=0)
    split = next(s for s in data.splits.values() if "caf\udce9.png" in "".join(s.paths))
    at = next(i for i, p in enumerate(split.paths) if p.endswith("caf\udce9.png"))
    assert split.read([at])[0] == open(odd, "rb").read() and data.split_hash
