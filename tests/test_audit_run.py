"""The audit on in-memory data, with W&B on, after training (checkpoint=), and as a command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT


@pytest.fixture
def audit_cfg():
    """audit_cfg(*overrides) -> the config scripts/inspect_data.py would get (quiet)."""
    from hydra import compose, initialize_config_dir

    def _compose(*overrides, logger="none"):
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            # one thread: these datasets are tiny, and idle threads wait on a busy machine
            return compose("inspect_data", overrides=[
                f"logger={logger}", "trainer.progress=false", "trainer.num_threads=1",
                *overrides])

    return _compose


def tensor_data(x: torch.Tensor, y: torch.Tensor, split_at: tuple[int, int]):
    from nnrecipe.data import DataBundle, TensorSplit

    a, b = split_at
    return DataBundle(TensorSplit(x[:a], y[:a]), TensorSplit(x[a:b], y[a:b]),
                      TensorSplit(x[b:], y[b:]), class_names=["a", "b"], in_chans=1,
                      image_size=x.shape[-1], mean=[0.0], std=[1.0])


def test_tensor_defects_non_finite_blank_and_leaks():
    """In-memory data: nan values, a constant image and a train image repeated in test."""
    from nnrecipe.audit import duplicates, quality
    from nnrecipe.audit.pool import build_pool

    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, 8, 8, generator=g)
    y = torch.arange(60) % 2
    x[5, 0, 2, 3] = float("nan")
    x[7] = 0.5
    x[55] = x[3]            # test #5 is train #3: a leak
    y[55] = 1 - y[3]        # ...with a different label
    pool = build_pool(tensor_data(x, y, (40, 50)), progress=False)
    corrupt = quality.corrupt_items(pool, blank_range=0.02, usual_fraction=0.9)
    assert [(c["split"], c["index"], c["kind"]) for c in corrupt] == [
        ("train", 5, "non-finite"), ("train", 7, "blank")]
    assert corrupt[0]["path"] is None and "1 non-finite" in corrupt[0]["reason"]
    (group,) = duplicates.exact_duplicates(pool)
    assert group["leak"] and group["labels_disagree"]
    assert [(i["split"], i["index"]) for i in group["items"]] == [("train", 3), ("test", 5)]
    assert pool.channel_mean[0] == pytest.approx(x[:40].nan_to_num(0.0).mean().item(), abs=1e-6)


def test_flat_folder_reports_skipped_file_as_unsplit(tmp_path):
    """Without train/val/test folders the splits are carved by seed; a file training skips
    belongs to none of them."""
    import numpy as np
    from omegaconf import OmegaConf
    from PIL import Image

    from nnrecipe.audit import quality
    from nnrecipe.audit.pool import build_pool
    from nnrecipe.data import build_data

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(20):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                tmp_path / c / f"{i}.png")
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    cfg = OmegaConf.create({"_target_": "nnrecipe.data.sources.image_folder",
                            "root": str(tmp_path), "image_size": 8, "batch_size": 4,
                            "val_fraction": 0.25, "test_fraction": 0.25})
    with pytest.warns(UserWarning, match="broken.jpg"):
        data = build_data(cfg, seed=0)
    pool = build_pool(data, progress=False)
    assert len(pool) == 40 and sorted(set(pool.split)) == ["test", "train", "val"]
    (bad,) = quality.corrupt_items(pool, 0.02, 0.9)
    assert (bad["split"], bad["index"], bad["path"], bad["label"]) == (
        "unsplit", -1, "dog/broken.jpg", "dog")


def test_nearest_neighbours_match_brute_force():
    from nnrecipe.audit.embed import nearest_neighbours

    z = torch.nn.functional.normalize(torch.randn(300, 16, generator=torch.Generator()
                                                  .manual_seed(0)), dim=1)
    dist, idx = nearest_neighbours(z, k=3, block=64, progress=False)
    full = 1 - z @ z.T
    full.fill_diagonal_(float("inf"))
    want, want_idx = full.topk(3, dim=1, largest=False)
    assert torch.equal(idx, want_idx)
    assert torch.allclose(dist, want.clamp_min(0), atol=1e-5)


def test_large_pools_use_faiss_and_still_find_each_nearest_neighbour():
    """Above exact_max rows: FAISS's inverted-file index. On clustered points (images are)
    it finds the true nearest neighbour, never returns a row as its own, and an exact copy is
    a neighbour at distance 0."""
    pytest.importorskip("faiss")
    from nnrecipe.audit.embed import nearest_neighbours

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(20, 16, generator=g)
    z = centres[torch.arange(2000) % 20] + 0.3 * torch.randn(2000, 16, generator=g)
    z[1] = z[0]  # an exact copy: ties with the row itself
    z = torch.nn.functional.normalize(z, dim=1)
    dist, idx = nearest_neighbours(z, k=3, progress=False, exact_max=100)
    exact_dist, exact_idx = nearest_neighbours(z, k=3, progress=False)
    assert not (idx == torch.arange(2000)[:, None]).any()
    assert idx[0, 0] == 1 and idx[1, 0] == 0 and dist[0, 0] < 1e-5
    assert (idx[:, 0] == exact_idx[:, 0]).float().mean() > 0.98
    assert torch.allclose(dist[:, 0], exact_dist[:, 0], atol=1e-4) or (
        (dist[:, 0] - exact_dist[:, 0]).abs() < 1e-4).float().mean() > 0.98


def wandb_records(run_dir: Path) -> list[dict]:
    (run,) = Path(run_dir).glob("wandb/offline-run-*")
    cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(cli), "leet", "inspect", "--json", str(run)], capture_output=True,
                         text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_digits_audit_logs_figures_and_tables_to_wandb(audit_cfg, tmp_path):
    from nnrecipe.audit import run_audit

    findings = run_audit(audit_cfg(logger="wandb"), tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["splits"]["train"]["size"] + report["splits"]["val"]["size"] + \
        report["splits"]["test"]["size"] == 1797
    assert report["imbalance_ratio"] < 1.2 and findings["label_model"]["accuracy"] > 0.9
    text = "\n".join(json.dumps(r) for r in wandb_records(tmp_path))
    assert '"job_type":"audit"' in text.replace(" ", "")
    for key in ("audit/figure/class_counts", "audit/figure/samples", "audit/figure/label_issues",
                "audit/table/label_issues", "audit/table/corrupt"):
        assert key in text, key
    summary = json.loads(subprocess.run(
        [str(Path(sys.executable).with_name("wandb")), "leet", "inspect", "--summary", "--json",
         str(next(tmp_path.glob("wandb/offline-run-*")))], capture_output=True, text=True,
        check=True).stdout)["summary"]
    assert summary["audit/images"] == 1797
    assert summary["audit/label_issues"] == len(report["label_issues"])
    assert summary["audit/table/label_issues"]["nrows"] == len(report["label_issues"])
    assert "class_counts.png" not in report  # figures are files, not JSON


def test_checkpoint_adds_the_models_view(run_train, audit_cfg, tmp_path):
    from nnrecipe.audit import run_audit
    from nnrecipe.checkpoint import load_checkpoint

    _, run_dir = run_train("trainer.max_epochs=2", "model=mlp", "trainer.num_threads=1")
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    f = run_audit(audit_cfg(f"checkpoint={run_dir}"), tmp_path / "audit")
    view = f["model"]
    assert view["checkpoint"].endswith("best.pt")
    # same splits, normalisation and weights as training: the same validation accuracy
    assert view["accuracy"]["val"] == pytest.approx(best["fit_state"]["best_val"]["acc"], abs=1e-3)
    val = torch.tensor(view["confusion_matrix"]["val"])
    assert val.sum() == f["splits"]["val"]["size"]
    assert val.diagonal().sum() / val.sum() == pytest.approx(view["accuracy"]["val"], abs=1e-3)
    losses = [i["loss"] for i in view["highest_loss"]["train"]]
    assert losses == sorted(losses, reverse=True) and losses[0] > 0
    wrong = view["highest_loss"]["val"][0]
    assert wrong["predicted_label"] != wrong["given_label"] or view["accuracy"]["val"] == 1
    md = (tmp_path / "audit" / "report.md").read_text()
    assert "figures/confusion_matrix.png" in md and "figures/highest_loss_val.png" in md
    report = json.loads((tmp_path / "audit" / "report.json").read_text())
    assert report["model"]["per_class_accuracy"]["val"].keys() == set(map(str, range(10)))


def test_checkpoint_view_uses_the_checkpoints_splits_not_the_audits(run_train, audit_cfg,
                                                                     tmp_path):
    """A model trained on another split: its "val" must be its own validation images."""
    from nnrecipe.audit import run_audit
    from nnrecipe.checkpoint import load_checkpoint

    _, run_dir = run_train("trainer.max_epochs=1", "model=linear", "trainer.num_threads=1",
                           "seed=3", "data.val_fraction=0.3")
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    f = run_audit(audit_cfg(f"checkpoint={run_dir}"), tmp_path / "audit")  # seed 0, val 0.15
    assert f["splits"]["val"]["size"] == round(0.3 * 1797)
    assert f["model"]["accuracy"]["val"] == pytest.approx(best["fit_state"]["best_val"]["acc"],
                                                          abs=1e-3)


def test_checkpoint_of_other_data_is_a_clear_error(run_train, audit_cfg, tmp_path):
    from nnrecipe.audit import run_audit
    from nnrecipe.errors import UserError

    _, run_dir = run_train("trainer.max_epochs=1", "data=synthetic", "data.num_samples=200",
                           "data.shape=[3,8,8]", "model=linear")
    with pytest.raises(UserError, match="trained with data._target_"):
        run_audit(audit_cfg(f"checkpoint={run_dir}"), tmp_path / "audit")
    with pytest.raises(UserError, match="does not exist"):
        run_audit(audit_cfg(f"checkpoint={tmp_path}/nothing.pt"), tmp_path / "audit2")


def test_command_writes_report_into_its_hydra_run_folder(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "inspect_data.py"), "logger=none",
         "trainer.num_threads=1",
         "data=synthetic", "data.num_samples=300", "data.shape=[3,16,16]",
         f"hydra.run.dir={out}"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert len(report["channel_mean"]) == 3 and report["splits"]["test"]["size"] == 45
    assert (out / "report.md").read_text().startswith("# Data audit")
    assert "mean: [" in proc.stderr + proc.stdout  # ready to paste into a data config


def test_outlier_statistics_of_uint8_thumbnails_equal_the_float_ones():
    from nnrecipe.audit.outliers import _uint8_stats, image_stats

    x8 = torch.randint(0, 256, (50, 3, 12, 10), dtype=torch.uint8,
                       generator=torch.Generator().manual_seed(0))
    assert np.allclose(_uint8_stats(x8), image_stats(x8.float() / 255), atol=1e-5)


def test_the_label_model_fits_on_a_sample_of_a_large_pool_and_predicts_every_image(audit_cfg):
    from nnrecipe.audit.labels import accuracy, out_of_fold_probs
    from nnrecipe.audit.pool import build_pool
    from nnrecipe.data import build_data

    cfg = audit_cfg()
    pool = build_pool(build_data(cfg.data, 0, "cpu"), 32, False)  # the digits
    probs = out_of_fold_probs(pool, fit_max=600)
    assert probs.shape == (len(pool), 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert accuracy(pool, probs) > 0.85
