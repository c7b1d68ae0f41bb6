"""The audit finds defects planted in an image folder, and reports them without crashing.

The folder is the bundled digits upscaled to 16x16 PNGs (learnable, quick), split into
train/val/test folders, with known defects planted: copies, leaks into test, noised copies,
empty/truncated/text files named .png, blank images, noise images, images moved to a wrong class
folder, copies under another label and one class cut to 10%. Recall is measured against the
planted lists.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

CUT_CLASS = "7"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(root, planted defects): paths relative to root, by kind."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("planted")
    d = load_digits()
    pixels = np.round(d.images / 16 * 255).astype(np.uint8).repeat(2, 1).repeat(2, 2)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(pixels))
    split_of = {i: ("train" if r < 0.7 * len(order) else "val" if r < 0.85 * len(order)
                    else "test") for r, i in enumerate(order)}
    files = {}
    for i in order:
        split, label = split_of[i], str(d.target[i])
        if split == "train" and label == CUT_CLASS and rng.random() > 0.1:
            continue  # one class cut to ~10% of its images
        rel = f"{split}/{label}/img{i:04d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i], "L").save(root / rel)
        files[rel] = (split, label, i)

    train = [r for r, (s, lab, _) in files.items() if s == "train" and lab != CUT_CLASS]
    sources = iter(rng.permutation(train).tolist())
    take = lambda n: [next(sources) for _ in range(n)]  # noqa: E731 (disjoint picks)
    p = {"exact": [], "leak": [], "near": [], "corrupt": [], "blank": [], "noise": [],
         "mislabel": [], "conflict": [], "unusual": []}
    for src in take(15):
        copy = src.replace(".png", "_copy.png")
        shutil.copy(root / src, root / copy)
        p["exact"].append((src, copy))
    for src in take(15):
        leak = src.replace("train/", "test/").replace(".png", "_leak.png")
        shutil.copy(root / src, root / leak)
        p["leak"].append((src, leak))
    for src in take(3):  # the same image under two labels
        other = "0" if src.split("/")[1] != "0" else "1"
        conflict = f"train/{other}/{Path(src).stem}_conflict.png"
        shutil.copy(root / src, root / conflict)
        p["conflict"].append((src, conflict))
    for src in take(15):
        a = np.asarray(Image.open(root / src), dtype=np.float64)
        noisy = np.clip(a + rng.normal(0, 4, a.shape), 0, 255).round().astype(np.uint8)
        near = src.replace(".png", "_noisy.png")
        Image.fromarray(noisy, "L").save(root / near)
        p["near"].append((src, near))
    good_png = (root / train[0]).read_bytes()
    for k, split in enumerate(["train"] * 9 + ["val"] * 3 + ["test"] * 3):
        bad = f"{split}/{k % 10 if str(k % 10) != CUT_CLASS else 0}/bad{k}.png"
        content = [b"", good_png[: len(good_png) // 2], b"not an image, just text\n"][k % 3]
        (root / bad).write_bytes(content)
        p["corrupt"].append(bad)
    for k in range(10):
        blank = f"train/{k if str(k) != CUT_CLASS else 0}/blank{k}.png"
        Image.fromarray(np.full((16, 16), 0 if k % 2 else 200, np.uint8), "L").save(root / blank)
        p["blank"].append(blank)
    odd = [(np.kron(pixels[order[0]], np.ones((3, 3), np.uint8))[:, :24], "L"),  # 24 wide, 48 high
           (np.stack([pixels[order[1]]] * 3, -1), "RGB")]
    for k, (a, mode) in enumerate(odd):
        unusual = f"val/{d.target[order[k]]}/unusual{k}.png"
        Image.fromarray(a, mode).save(root / unusual)
        p["unusual"].append(unusual)
    for k in range(5):
        noise = f"train/{k}/noise{k}.png"
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), "L").save(root / noise)
        p["noise"].append(noise)
    for src in take(30):
        label = src.split("/")[1]
        wrong = rng.choice([c for c in "012345689" if c != label])
        moved = f"train/{wrong}/{Path(src).name}"
        (root / src).rename(root / moved)
        p["mislabel"].append((moved, label))
    return root, p


@pytest.fixture(scope="module")
def audit(planted, tmp_path_factory):
    """The audit's findings on the planted folder, and its run folder."""
    from hydra import compose, initialize_config_dir

    from nnrecipe.audit import run_audit

    root, _ = planted
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("inspect_data", overrides=[
            "logger=none", "trainer.progress=false", "trainer.num_threads=1",
            "data=image_folder", f"data.root={root}", "data.in_chans=1", "data.image_size=16"])
    run_dir = tmp_path_factory.mktemp("audit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # build_data's "skipping unreadable files" warning
        run_audit(cfg, run_dir)
    return json.loads((run_dir / "report.json").read_text()), run_dir


def recall(found: int, planted: list) -> float:
    return found / len(planted)


def groups(report, kind):
    return [{i["path"] for i in g["items"]} | {"leak" if g["leak"] else ""}
            for g in report["duplicates"] if g["kind"] == kind]


def test_exact_duplicates_and_leaks(planted, audit):
    (_, p), (report, _) = planted, audit
    exact = groups(report, "exact")
    assert recall(sum(any({a, b} <= g for g in exact) for a, b in p["exact"]), p["exact"]) >= 0.95
    leaks = [g for g in exact if "leak" in g]
    assert recall(sum(any({a, b} <= g for g in leaks) for a, b in p["leak"]), p["leak"]) >= 0.95
    conflicts = [{i["path"] for i in g["items"]} for g in report["duplicates"]
                 if g["labels_disagree"]]
    assert all(any({a, b} <= g for g in conflicts) for a, b in p["conflict"])
    assert len(conflicts) == len(p["conflict"])
    # noised copies are not exact duplicates; blank images are reported blank, not duplicates
    assert not any(b in g for g in exact for _, b in p["near"])
    assert not any(b in g for g in exact for b in p["blank"])


def test_near_duplicates(planted, audit):
    (_, p), (report, _) = planted, audit
    near = groups(report, "near")
    assert recall(sum(any({a, b} <= g for g in near) for a, b in p["near"]), p["near"]) >= 0.7
    assert all(g["distance"] <= report["thresholds"]["near_duplicate_distance"]
               for g in report["duplicates"] if g["kind"] == "near")


def test_corrupt_and_blank_files_reported_never_clean_ones(planted, audit):
    (_, p), (report, _) = planted, audit
    corrupt = {c["path"]: c for c in report["corrupt"]}
    assert recall(sum(b in corrupt for b in p["corrupt"]), p["corrupt"]) >= 0.95
    assert recall(sum(b in corrupt for b in p["blank"]), p["blank"]) >= 0.95
    assert corrupt[p["unusual"][0]]["kind"] == "size" and "24x48" in corrupt[p["unusual"][0]][
        "reason"]
    assert corrupt[p["unusual"][1]]["kind"] == "mode" and "RGB" in corrupt[p["unusual"][1]][
        "reason"]
    # no clean image reported
    assert set(corrupt) == set(p["corrupt"]) | set(p["blank"]) | set(p["unusual"])
    assert corrupt[p["corrupt"][0]]["reason"] == "empty file"
    assert "not a readable image" in corrupt[p["corrupt"][2]]["reason"]
    assert {corrupt[b]["split"] for b in p["corrupt"]} == {"train", "val", "test"}
    # worst first: unreadable files before blank images
    kinds = [c["kind"] for c in report["corrupt"]]
    assert kinds == sorted(kinds, key=["unreadable", "non-finite", "blank", "mode",
                                       "size"].index)


def test_training_skips_corrupt_files_with_one_warning_naming_them(planted, compose_cfg):
    from nnrecipe.data import build_data

    root, p = planted
    cfg = compose_cfg("data=image_folder", f"data.root={root}", "data.in_chans=1",
                      "data.image_size=16")
    with pytest.warns(UserWarning) as caught:
        data = build_data(cfg.data, 0)
    skipping = [str(w.message) for w in caught if "skipping" in str(w.message)]
    assert len(skipping) == 1 and "15 unreadable" in skipping[0]
    assert str(root / p["corrupt"][0]) in skipping[0]
    kept = {str(q) for s in data.splits.values() for q in s.paths}
    assert not kept & set(p["corrupt"])


def test_likely_label_errors(planted, audit):
    (_, p), (report, _) = planted, audit
    issues = {i["path"]: i for i in report["label_issues"]}
    hits = [m for m, true in p["mislabel"] if m in issues and
            issues[m]["suggested_label"] == true]
    assert recall(len(hits), p["mislabel"]) >= 0.7
    assert len(issues) <= 3 * len(p["mislabel"])
    scores = [i["score"] for i in report["label_issues"]]
    assert scores == sorted(scores, reverse=True)


def test_imbalance_and_class_counts(planted, audit):
    (root, _), (report, _) = planted, audit
    counts = report["splits"]["train"]["class_counts"]
    assert min(counts, key=counts.get) == CUT_CLASS
    assert report["imbalance_ratio"] == pytest.approx(max(counts.values()) / counts[CUT_CLASS],
                                                      rel=1e-3)
    assert report["imbalance_ratio"] > 5
    on_disk = len(list((root / "val").rglob("*.png"))) - sum(
        1 for c in report["corrupt"] if c["split"] == "val" and c["kind"] == "unreadable")
    assert report["splits"]["val"]["size"] == on_disk


def test_outliers_find_noise_images(planted, audit):
    (_, p), (report, _) = planted, audit
    top = [o["path"] for o in report["outliers"]]
    assert recall(sum(n in top for n in p["noise"]), p["noise"]) >= 0.8
    assert [o["score"] for o in report["outliers"]] == sorted(
        [o["score"] for o in report["outliers"]], reverse=True)


def test_channel_stats_match_training_pixels(planted, audit):
    (root, p), (report, _) = planted, audit
    bad = set(p["corrupt"])
    values = np.concatenate([np.asarray(Image.open(f), dtype=np.float64).ravel() / 255
                             for f in sorted((root / "train").rglob("*.png"))
                             if f.relative_to(root).as_posix() not in bad])
    assert report["channel_mean"] == pytest.approx([values.mean()], abs=1e-3)
    assert report["channel_std"] == pytest.approx([values.std()], abs=1e-3)


def test_report_schema_and_markdown(audit):
    report, run_dir = audit
    assert list(report)[:8] == ["splits", "imbalance_ratio", "duplicates", "corrupt",
                                "outliers", "label_issues", "channel_mean", "channel_std"]
    item_keys = {"split", "index", "path", "label"}
    for c in report["corrupt"]:
        assert item_keys | {"reason"} <= set(c)
    for i in report["label_issues"]:
        assert item_keys | {"given_label", "suggested_label", "score"} <= set(i)
    for g in report["duplicates"]:
        assert g["kind"] in ("exact", "near") and all(item_keys <= set(i) for i in g["items"])
    # internal pool positions and figure helpers stay out of the file
    assert not any(k.startswith("_") for k in report)
    assert not any("pool" in x for key in ("corrupt", "outliers", "label_issues", "duplicates")
                   for x in report[key])
    md = (run_dir / "report.md").read_text()
    summary = md.split("## ")[0]
    assert "15 corrupt" not in summary and "corrupt or unusual images" in summary
    assert "leak" in summary and "likely label error" in summary
    figures = [line.split("](")[1].rstrip(")") for line in md.splitlines()
               if line.startswith("![")]
    assert {"figures/class_counts.png", "figures/label_issues.png",
            "figures/near_duplicates.png"} <= set(figures)
    assert all((run_dir / f).is_file() for f in figures)
