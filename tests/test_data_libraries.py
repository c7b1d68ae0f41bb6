"""data=hf and data=webdataset on small local datasets: they train, split the same way every
run, and read their samples from the library's files (data.cache=index) exactly as from memory."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from nnrecipe.data.images import decode_resized
from nnrecipe.errors import UserError


def images(n=40, size=10):
    """Learnable: class 1 is brighter. As PNG-backed PIL images."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        pixels = (rng.random((size, size, 3)) * 60 + 150 * (i % 2)).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG")
        out.append(buf.getvalue())
    return out, [i % 2 for i in range(n)]


def hf_dataset_dict():
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as HFImage

    data, labels = images()
    features = Features({"img": HFImage(), "y": ClassLabel(names=["dark", "light"])})
    ds = Dataset.from_dict({"img": [{"bytes": b, "path": None} for b in data], "y": labels},
                           features=features)
    return DatasetDict(train=ds.select(range(30)), test=ds.select(range(30, 40)))


def write_shards(folder, data, labels, per_shard=20, compress=False, broken=(), only=None):
    """webdataset's TarWriter: <key>.png + <key>.cls; the samples in `broken` get a PNG cut
    short (it cannot be decoded). `only`: write that shard alone."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".tar.gz" if compress else ".tar"
    for shard in range(len(data) // per_shard) if only is None else [only]:
        with wds.TarWriter(str(folder / f"train-{shard:04d}{suffix}"), compress=compress) as sink:
            for i in range(shard * per_shard, (shard + 1) * per_shard):
                png = data[i][:40] if i in broken else data[i]
                sink.write({"__key__": f"{i:06d}", "png": png, "cls": labels[i]})
    return folder


def runs_equal(run_train, tmp_path, caches, *overrides):
    """A 2-epoch run per data.cache value (`index+2`: read by 2 DataLoader workers): the
    metrics, to the last bit, and the split."""
    runs = []
    for cache in caches:
        cache, _, workers = cache.partition("+")
        run_dir = tmp_path / f"run-{cache}-{len(runs)}"
        run_train(*overrides, f"data.cache={cache}", "model=linear", "trainer.max_epochs=2",
                  "data.image_size=8", "data.batch_size=8", f"data.num_workers={workers or 0}",
                  run_dir=run_dir)
        runs.append(json.loads((run_dir / "metrics.json").read_text()))
    for run in runs[1:]:
        assert run["summary"] == runs[0]["summary"] and run["history"] == runs[0]["history"]
        assert run["split_hash"] == runs[0]["split_hash"]
    return runs


def train_twice(run_train, tmp_path, *overrides):
    """Two 1-epoch runs with different seeds: their test split must be the same."""
    runs = []
    for seed in (0, 1):
        run_dir = tmp_path / f"run{seed}"
        run_train(*overrides, "model=linear", "trainer.max_epochs=1", "data.image_size=8",
                  "data.batch_size=8", f"seed={seed}", run_dir=run_dir)
        runs.append(json.loads((run_dir / "metrics.json").read_text()))
    assert all(r["status"] == "finished" for r in runs)
    return runs


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet"])
def test_hf_local_dataset_trains_on_its_own_test_split(run_train, compose_cfg, tmp_path,
                                                      layout):
    from nnrecipe.data import build_data

    dd, folder = hf_dataset_dict(), tmp_path / layout
    if layout == "save_to_disk":
        dd.save_to_disk(str(folder))
    else:
        folder.mkdir()
        for name, ds in dd.items():
            ds.to_parquet(str(folder / f"{name}-00000-of-00001.parquet"))
    overrides = ("data=hf", f"data.path={folder}", "data.image_column=img",
                 "data.label_column=y")
    train_twice(run_train, tmp_path, *overrides)
    cfg = compose_cfg(*overrides, "data.image_size=8")
    a, b = build_data(cfg.data, 0), build_data(cfg.data.copy(), 5)
    assert len(a.test) == 10 and len(a.train) + len(a.val) == 30  # its test, val carved
    assert a.class_names == ["dark", "light"] and a.split_hash == b.split_hash


def test_hf_hub_name_offline_says_what_to_do(monkeypatch):
    import datasets
    import huggingface_hub

    from nnrecipe.data.hf import hf_dataset

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="save_to_disk") as e:
        hf_dataset("nnrecipe-nobody/not-here")
    assert "data.path=nnrecipe-nobody/not-here" in str(e.value)


def test_hf_wrong_column_is_named(tmp_path):
    from nnrecipe.data.hf import hf_dataset

    hf_dataset_dict().save_to_disk(str(tmp_path / "d"))
    with pytest.raises(UserError, match="data.image_column=image is not a column.*img, y"):
        hf_dataset(str(tmp_path / "d"), label_column="y")


def test_webdataset_shards_train_and_split_the_same_every_run(run_train, tmp_path):
    write_shards(tmp_path / "shards", *images(60))
    runs = train_twice(run_train, tmp_path, "data=webdataset",
                       f"data.shards='{tmp_path}/shards/train-{{0000..0002}}.tar'")
    from nnrecipe.data.shards import webdataset_shards

    a = webdataset_shards(str(tmp_path / "shards"), image_size=8)
    b = webdataset_shards(str(tmp_path / "shards"), image_size=8)
    assert [len(s) for s in a.splits.values()] == [48, 6, 6]
    assert a.test.paths == b.test.paths and a.class_names == ["0", "1"]
    assert runs[0]["history"] != runs[1]["history"]  # the seed changed training, not the split


def test_webdataset_read_by_offset_trains_exactly_as_from_memory(run_train, tmp_path):
    """data.cache=index (workers read each batch from the tar by offset: any size) and
    data.cache=none give the metrics of the in-memory path, bit for bit."""
    shards = write_shards(tmp_path / "shards", *images(60))
    runs_equal(run_train, tmp_path, ("memory", "index+2", "none"), "data=webdataset",
               f"data.shards={shards}")


def test_hf_rows_read_by_workers_train_exactly_as_from_memory(run_train, tmp_path):
    hf_dataset_dict().save_to_disk(str(tmp_path / "d"))
    runs_equal(run_train, tmp_path, ("memory", "index"), "data=hf", f"data.path={tmp_path}/d",
               "data.image_column=img", "data.label_column=y")


def test_shard_index_is_reused_and_redone_only_for_a_changed_shard(tmp_path):
    from nnrecipe.data.shards import webdataset_shards

    data, labels = images(60)
    shards = write_shards(tmp_path / "shards", data, labels)
    cache = tmp_path / "cache"

    def load():
        bundle = webdataset_shards(str(shards), image_size=8, cache="index",
                                   cache_dir=str(cache))
        return bundle, {f.name.split("-")[1]: f.stat().st_mtime_ns
                        for f in cache.glob("*.shard.pkl")}

    first, written = load()
    assert sorted(written) == ["0000.tar", "0001.tar", "0002.tar"]
    second, again = load()
    assert again == written and second.test.paths == first.test.paths  # nothing indexed
    labels[25] = 1 - labels[25]  # one label of the second shard changed: that shard again
    write_shards(tmp_path / "shards", data, labels, only=1)
    third, after = load()
    assert [k for k in after if after[k] != written[k]] == ["0001.tar"]
    found = {k: t for s in third.splits.values() for k, t in zip(s.paths, s.targets)}
    assert found["train-0001.tar/000025"] == labels[25]


@pytest.mark.parametrize("compress", [False, True])
def test_broken_sample_is_skipped_once_with_one_warning(tmp_path, compress):
    from nnrecipe.data.shards import webdataset_shards

    shards = write_shards(tmp_path / "shards", *images(60), broken={7, 33}, compress=compress)
    name = "train-0000.tar" + (".gz" if compress else "")
    with pytest.warns(UserWarning, match=rf"skipping 2 samples that cannot be used: "
                                         rf"{name}/000007 \(not a readable image"):
        bundle = webdataset_shards(str(shards), image_size=8,
                                   cache="memory" if compress else "index",
                                   cache_dir=str(tmp_path / "c"))
    assert sum(len(s) for s in bundle.splits.values()) == 58
    assert not any(p.endswith(("000007", "000033")) for s in bundle.splits.values()
                   for p in s.paths)
    from nnrecipe.audit.pool import build_pool

    bundle.mean, bundle.std = [0.0] * 3, [1.0] * 3  # what build_data would set: pixels as-is
    listed = build_pool(bundle, thumb_size=8, progress=False).unreadable  # the audit names them
    assert [item["path"] for item in listed] == [f"{name}/000007", f"train-0001.tar"
                                                 f"{'.gz' if compress else ''}/000033"]


def test_compressed_shards_need_the_memory_cache(tmp_path):
    from nnrecipe.data.shards import webdataset_shards

    shards = write_shards(tmp_path / "shards", *images(40), compress=True)
    with pytest.raises(UserError, match=r"data.cache=index reads images from local .tar shards by "
                                        r"offset.*train-0000.tar.gz.*data.cache=memory"):
        webdataset_shards(str(shards), image_size=8, cache="index")
    bundle = webdataset_shards(str(shards), image_size=8, cache="memory")
    assert sum(len(s) for s in bundle.splits.values()) == 40 and bundle.in_memory


def test_a_sample_in_two_shards_is_a_leak_the_checks_and_the_audit_find(tmp_path):
    """The shard index's content hashes feed the leakage check (no image read again), and the
    audit decodes the samples through the same reader."""
    from nnrecipe.audit.pool import build_pool
    from nnrecipe.checks.data import check_leakage, split_hashes
    from nnrecipe.data.shards import webdataset_shards

    data, labels = images(60)
    for i in range(0, 60, 2):  # every even sample twice (another key, another shard)
        data[i + 1 if i + 1 < 60 else i], labels[i + 1] = data[i], labels[i]
    shards = write_shards(tmp_path / "shards", data, labels)
    bundle = webdataset_shards(str(shards), image_size=8, cache="index",
                               cache_dir=str(tmp_path / "c"))
    assert split_hashes(bundle.splits)[1] == "the index's hashes"
    result = check_leakage(bundle.splits)
    assert result.status == "FAIL" and "test" in result.measured, result
    pool = build_pool(bundle, thumb_size=8, progress=False)
    assert len(pool.hashes) == 60 and len(set(pool.hashes)) == 30


def tar_of(path, members: dict[str, bytes]):
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_shard_members_are_grouped_as_webdataset_groups_them(tmp_path, monkeypatch):
    """Keys with folders, members webdataset skips (no extension, ._x, __meta__), zero-padded
    integer labels; shards past the open-file cap: the index path reads what memory reads."""
    from nnrecipe.data.shards import TarMembers, webdataset_shards

    data, labels = images(24)
    (tmp_path / "s").mkdir()
    for shard in range(3):
        members = {"LICENSE": b"MIT", "__meta__/info": b"{}", f"._{shard}.png": b"junk"}
        for i in range(shard * 8, shard * 8 + 8):
            members[f"dir.v1/{i:04d}.png"] = data[i]
            members[f"dir.v1/{i:04d}.cls"] = f"0{labels[i]}".encode()
        tar_of(tmp_path / "s" / f"{shard}.tar", members)
    monkeypatch.setattr(TarMembers, "OPEN", 2)
    index = webdataset_shards(str(tmp_path / "s"), image_size=8, cache="index",
                              cache_dir=str(tmp_path / "c"))
    memory = webdataset_shards(str(tmp_path / "s"), image_size=8, cache="memory",
                               cache_dir=str(tmp_path / "c"))
    assert index.class_names == ["0", "1"] and index.test.paths[0][1:].startswith(".tar/dir.v1/")
    for name, split in index.splits.items():
        assert split.paths == memory.splits[name].paths
        assert split.targets == memory.splits[name].y.tolist()
        pixels = torch.stack([decode_resized(b, 3, 8) for b in split.read(range(len(split)))])
        assert torch.equal(pixels.float().div(255), memory.splits[name].x)
    assert len(index.train.reader.fds) <= 2


def test_compressed_shards_of_the_same_name_in_two_folders_stay_apart(tmp_path):
    from nnrecipe.data.shards import webdataset_shards

    data, labels = images(20)
    white = io.BytesIO()
    Image.fromarray(np.full((10, 10, 3), 255, np.uint8)).save(white, "PNG")
    write_shards(tmp_path / "train", data, labels, compress=True)
    write_shards(tmp_path / "val", [white.getvalue()] * 20, labels, compress=True)
    bundle = webdataset_shards(str(tmp_path / "train"), val_shards=str(tmp_path / "val"),
                               image_size=8, cache="memory")
    assert bundle.val.paths[0].startswith("val/train-0000.tar.gz/")
    assert bool((bundle.val.x == 1).all()) and not bool((bundle.train.x == 1).all())


def test_a_shard_missing_from_a_brace_pattern_is_named(tmp_path):
    from nnrecipe.data.shards import webdataset_shards

    write_shards(tmp_path / "s", *images(40))
    with pytest.raises(UserError, match=r"1 of the 3 shards it names do not exist "
                                        r"\(e.g. .*train-0002.tar\)"):
        webdataset_shards(f"{tmp_path}/s/train-{{0000..0002}}.tar", image_size=8)


def test_hf_rows_are_checked_once_broken_images_skipped_and_hashes_kept(tmp_path):
    """As the folder index does for files: each row hashed and decoded once (cached while the
    Arrow files are unchanged), a broken image skipped with one warning and named by the
    audit, the hashes handed to the leakage check."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as HFImage

    from nnrecipe.checks.data import split_hashes
    from nnrecipe.data.hf import hf_dataset

    data, labels = images(30)
    data[4] = data[4][:30]  # cut short: not decodable
    features = Features({"image": HFImage(), "label": ClassLabel(names=["dark", "light"])})
    Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in data], "label": labels},
                      features=features).save_to_disk(str(tmp_path / "d"))
    cache = tmp_path / "cache"

    def load():
        return hf_dataset(str(tmp_path / "d"), image_size=8, cache="index",
                          cache_dir=str(cache))

    with pytest.warns(UserWarning, match=r"skipping 1 images that cannot be used: train/4 "):
        bundle = load()
    assert bundle.skipped[0]["path"] == "train/4" and bundle.skipped[0]["label"] == "dark"
    assert sum(len(s) for s in bundle.splits.values()) == 29
    assert split_hashes(bundle.splits)[1] == "the index's hashes"
    (checked,) = cache.glob("*.hf-image.pkl")
    written = checked.stat().st_mtime_ns
    with pytest.warns(UserWarning, match="train/4"):
        again = load()
    assert checked.stat().st_mtime_ns == written and again.test.paths == bundle.test.paths
    assert bundle.read_note == "rows checked: 30 of 30"  # the run log's data line says so
    assert again.read_note == "rows checked: 0 of 30 (the others from the cache)"


def test_remote_shards_stream_once_into_memory_and_index_says_why_not(tmp_path):
    """An URL webdataset opens (here `pipe:cat`, which works offline like `pipe:aws s3 cp`):
    streamed once with data.cache=memory; data.cache=index needs local offsets and says so."""
    from nnrecipe.data.shards import webdataset_shards

    data, labels = images(40)
    write_shards(tmp_path / "s", data, labels)
    pattern = f"pipe:cat {tmp_path}/s/train-{{0000..0001}}.tar"
    with pytest.raises(UserError, match=r"which remote shards such as pipe:cat .*train-0000.tar "
                                        r"do not have: use data.cache=memory"):
        webdataset_shards(pattern, image_size=8, cache="index")
    remote = webdataset_shards(pattern, image_size=8, cache="memory")
    local = webdataset_shards(str(tmp_path / "s"), image_size=8, cache="memory")
    for name, split in remote.splits.items():
        assert split.paths == local.splits[name].paths and torch.equal(split.x,
                                                                       local.splits[name].x)
