"""data=hf and data=webdataset on small local datasets: they train, and split the same way
every run."""

import io
import json

import numpy as np
import pytest
from PIL import Image

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
    import webdataset as wds

    data, labels = images(60)
    (tmp_path / "shards").mkdir()
    for shard in range(3):
        with wds.TarWriter(str(tmp_path / "shards" / f"train-{shard:04d}.tar")) as sink:
            for i in range(shard * 20, shard * 20 + 20):
                sink.write({"__key__": f"{i:06d}", "png": data[i], "cls": labels[i]})
    runs = train_twice(run_train, tmp_path, "data=webdataset",
                       f"data.shards='{tmp_path}/shards/train-{{0000..0002}}.tar'")
    from nnrecipe.data.shards import webdataset_shards

    a = webdataset_shards(str(tmp_path / "shards"), image_size=8)
    b = webdataset_shards(str(tmp_path / "shards"), image_size=8)
    assert [len(s) for s in a.splits.values()] == [48, 6, 6]
    assert a.test.paths == b.test.paths and a.class_names == ["0", "1"]
    assert runs[0]["history"] != runs[1]["history"]  # the seed changed training, not the split
