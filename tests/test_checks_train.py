"""The preflight inside train(): outputs, strict, checks.only, W&B, no effect on training."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from nnrecipe.checks import CHECKS, PreflightFailed
from nnrecipe.errors import UserError

FAST = ("checks=default", "trainer.max_epochs=1", "trainer.num_threads=1")


def test_preflight_writes_checks_json_and_pictures(run_train):
    _, run_dir = run_train(*FAST)
    rows = json.loads((run_dir / "checks.json").read_text())
    assert [r["name"] for r in rows] == CHECKS
    assert all(set(r) == {"name", "status", "measured", "expected", "message", "seconds"}
               for r in rows)
    assert {r["status"] for r in rows} == {"PASS"}, [r for r in rows if r["status"] != "PASS"]
    for picture in ("batch.png", "prediction_dynamics.png"):
        assert (run_dir / picture).stat().st_size > 5000


def _final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)


def test_checks_on_and_off_give_bit_identical_training(run_train, tmp_path):
    # dropout and a random augmentation draw from the global RNG the checks also use
    extra = ("trainer.max_epochs=2", "trainer.num_threads=1", "model.dropout=0.3",
             "augmentation=flip_crop", "augmentation.hflip=0")
    on, on_dir = run_train("checks=default", *extra, run_dir=tmp_path / "on")
    off, off_dir = run_train("checks=off", *extra, run_dir=tmp_path / "off")
    assert (on_dir / "checks.json").exists() and not (off_dir / "checks.json").exists()
    assert on == off
    a, b = _final_weights(on_dir), _final_weights(off_dir)
    assert a["fit_state"]["history"] == b["fit_state"]["history"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_a_failed_check_stops_the_run_before_training(run_train, tmp_path):
    with pytest.raises(PreflightFailed, match="loss_decreases") as e:
        run_train(*FAST, "optimizer.lr=1e-9", run_dir=tmp_path / "strict")
    assert isinstance(e.value, UserError)  # main(): one message + exit 1; sweeps: failed trial
    assert not (tmp_path / "strict" / "checkpoints").exists()
    rows = json.loads((tmp_path / "strict" / "checks.json").read_text())
    assert {r["name"] for r in rows if r["status"] == "FAIL"} >= {"loss_decreases"}


def test_strict_false_trains_despite_a_failure(run_train):
    best, run_dir = run_train(*FAST, "optimizer.lr=1e-9", "checks.strict=false")
    assert math.isfinite(best) and (run_dir / "checkpoints" / "last.pt").exists()
    rows = json.loads((run_dir / "checks.json").read_text())
    assert "FAIL" in {r["status"] for r in rows}


def test_checks_only_runs_the_preflight_and_stops(run_train, tmp_path):
    best, run_dir = run_train(*FAST, "checks.only=true", "checks.skip=[leakage]")
    assert best is None and not (run_dir / "checkpoints").exists()  # no objective to report
    rows = json.loads((run_dir / "checks.json").read_text())
    assert [r["status"] for r in rows if r["name"] == "leakage"] == ["SKIP"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "checked" and metrics["checks"]["leakage"] == "SKIP"
    with pytest.raises(PreflightFailed):  # a failure exits non-zero even with strict=false
        run_train(*FAST, "checks.only=true", "checks.strict=false", "optimizer.lr=1e-9",
                  run_dir=tmp_path / "only_fail")


def test_unknown_check_name_in_skip_is_a_user_error(run_train):
    with pytest.raises(UserError, match="checks.skip"):
        run_train(*FAST, "checks.skip=[overfit]")


def test_checks_land_in_the_wandb_run(run_train):
    _, run_dir = run_train(*FAST, logger="wandb")
    wandb_bin = Path(sys.executable).with_name("wandb")
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    out = subprocess.run([str(wandb_bin), "leet", "inspect", "--summary", "--json", str(offline)],
                         capture_output=True, text=True, check=True).stdout
    summary = json.loads(out)["summary"]
    assert all(summary[f"checks/{name}"] == "PASS" for name in CHECKS)
    assert summary["checks/failed"] == 0
    assert summary["checks/table"]["_type"] == "table-file"
    assert "checks/batch" in summary and "checks/prediction_dynamics" in summary
    # the preflight logs at step 0: training's steps 1, 2, ... are all kept
    records = subprocess.run([str(wandb_bin), "leet", "inspect", "--json", str(offline)],
                             capture_output=True, text=True, check=True).stdout
    history = [json.loads(line)["history"]["item"] for line in records.splitlines()
               if '"type":"history"' in line]
    steps = [h["_step"] for h in history if "train/loss" in h]
    assert steps[0] == 1 and steps == list(range(1, len(steps) + 1))


def test_single_run_with_a_failed_check_exits_1_with_one_message(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "src" / "train.py"), "logger=none", "optimizer.lr=1e-9",
         "trainer.num_threads=1", "trainer.progress=false", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 1
    assert "nnrecipe: error:" in result.stderr and "preflight check(s) failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_preflight_on_an_image_folder(run_train, tmp_path):
    """File datasets: leakage by file hash, batches through the DataLoader."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c, name in enumerate(["dark", "mid", "light"]):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(14):
            pixels = (0.3 * c + 0.2 * torch.rand(12, 12, 3, generator=g)) * 255
            Image.fromarray(pixels.byte().numpy()).save(tmp_path / "images" / name / f"{i}.png")
    best, run_dir = run_train(*FAST, "data=image_folder", f"data.root={tmp_path / 'images'}",
                              "data.image_size=12", "data.batch_size=8", "data.num_workers=0",
                              "model=mlp", "checks.only=true", "checks.strict=false")
    rows = {r["name"]: r for r in json.loads((run_dir / "checks.json").read_text())}
    assert rows["leakage"]["status"] == "PASS" and "val∩train: 0" in rows["leakage"]["measured"]
    assert rows["data_batch"]["status"] == "PASS", rows["data_batch"]
    assert (run_dir / "batch.png").exists()


def _tiny_folder(root: Path, classes=("dark", "mid", "light"), per_class=14, size=12) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (0.3 * c + 0.2 * torch.rand(size, size, 3, generator=g)) * 255
            Image.fromarray(pixels.byte().numpy()).save(root / name / f"{i}.png")
    return root


def test_checks_on_and_off_give_bit_identical_training_on_file_data(run_train, tmp_path):
    """A DataLoader iterator without a generator seeds itself from the global RNG: the
    prediction-dynamics batch (read after the preflight's RNG guard) must not draw from it."""
    folder = _tiny_folder(tmp_path / "images")
    extra = ("data=image_folder", f"data.root={folder}", "data.image_size=12",
             "data.batch_size=8", "data.num_workers=0", "trainer.max_epochs=2",
             "trainer.num_threads=1", "model.dropout=0.3", "checks.strict=false")
    on, on_dir = run_train("checks=default", *extra, run_dir=tmp_path / "on")
    off, off_dir = run_train("checks=off", *extra, run_dir=tmp_path / "off")
    assert (on_dir / "prediction_dynamics.png").exists()
    assert on == off
    a, b = _final_weights(on_dir), _final_weights(off_dir)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
