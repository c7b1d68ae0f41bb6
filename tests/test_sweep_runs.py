"""Real sweeps, end to end: `python src/train.py -m ...` as a user runs it, offline, 1 epoch."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
WANDB = Path(sys.executable).with_name("wandb")


def sweep(sweep_dir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "PYTHONPATH": str(ROOT / "src")}  # launcher workers import this checkout's nnrecipe
    cmd = [sys.executable, str(ROOT / "src" / "train.py"), "-m", *overrides,
           "trainer.max_epochs=1", "trainer.progress=false", f"hydra.sweep.dir={sweep_dir}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        pytest.fail(f"sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def wandb_run(trial_dir: Path) -> dict:
    """The W&B run of one trial, read back with W&B's CLI: state, group, job type, name, config."""
    (offline,) = (trial_dir / "wandb").glob("offline-run-*")
    records = subprocess.run([str(WANDB), "leet", "inspect", "--json", str(offline)],
                             capture_output=True, text=True, check=True).stdout
    summary = subprocess.run([str(WANDB), "leet", "inspect", "--summary", "--json", str(offline)],
                             capture_output=True, text=True, check=True).stdout
    run = next(r["run"] for r in map(json.loads, records.splitlines()) if r["type"] == "run")
    return {**json.loads(summary), "group": run.get("run_group"), "job_type": run.get("job_type")}


def trials(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def overrides_of(trial_dir: Path) -> dict[str, str]:
    pairs = yaml.safe_load((trial_dir / ".hydra/overrides.yaml").read_text())
    return dict(o.split("=", 1) for o in pairs)


def test_random_search_four_trials_four_wandb_runs_in_one_group(tmp_path):
    out = tmp_path / "lr-sweep"
    sweep(out, "hparams_search=random", "hydra.sweeper.n_trials=4", "model=mlp")

    swept = ["optimizer.lr", "optimizer.weight_decay", "data.batch_size", "model.dropout"]
    dirs = trials(out)
    assert len(dirs) == 4
    sampled = [tuple(overrides_of(d)[k] for k in swept) for d in dirs]
    assert len(set(sampled)) == 4  # four distinct sampled configurations
    runs = [wandb_run(d) for d in dirs]
    assert {r["group"] for r in runs} == {"lr-sweep"}  # the sweep folder's name
    for num, (run, values) in enumerate(zip(runs, sampled, strict=True)):
        assert run["state"] == "finished" and run["job_type"] == "trial"
        assert run["name"].startswith(f"trial{num}-lr=")
        config = run["config"]
        lr, wd, batch_size, dropout = map(float, values)
        assert 1e-4 <= lr <= 3e-2 and config["optimizer"]["lr"] == pytest.approx(lr)
        assert config["optimizer"]["weight_decay"] == pytest.approx(wd)
        assert config["data"]["batch_size"] == batch_size
        assert config["model"]["dropout"] == pytest.approx(dropout)
        assert f"optimizer.lr={values[0]}" in config["overrides"]
        assert "model=mlp" in run["tags"]  # the fixed overrides; swept values are in the name
        assert {"best/val_loss", "best/val_acc", "test/acc"} <= run["summary"].keys()

    best = yaml.safe_load((out / "optimization_results.yaml").read_text())
    losses = {d.name: json.loads((d / "metrics.json").read_text())["objective"] for d in dirs}
    best_trial = min(losses, key=losses.get)
    assert best["best_value"] == pytest.approx(losses[best_trial])
    assert best["best_params"]["optimizer.lr"] == pytest.approx(
        float(overrides_of(out / best_trial)["optimizer.lr"]))


@pytest.mark.slow  # ~20-40 s; the failure accounting itself is tested in-process
def test_diverging_trials_fail_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "sweep"
    done = sweep(out, "hparams_search=random", "hydra.sweeper.n_trials=4",
                 "hydra.sweeper.max_failure_rate=0.75", "model=mlp", "optimizer=sgd",
                 "optimizer.lr=choice(0.01, 1e6)")  # SGD at lr 1e6: NaN within a few steps
    assert done.returncode == 0
    status = {d.name: json.loads((d / "metrics.json").read_text())["status"] for d in trials(out)}
    assert len(status) == 4
    assert "failed" in status.values() and "finished" in status.values()
    for name, state in status.items():
        lr = float(overrides_of(out / name)["optimizer.lr"])
        assert state == ("failed" if lr > 1 else "finished")
        assert wandb_run(out / name)["state"] == state  # the diverged trial's W&B run: failed
    assert yaml.safe_load((out / "optimization_results.yaml").read_text())["best_params"][
        "optimizer.lr"] == 0.01


def make_image_folder(root: Path, per_class: int = 14) -> Path:
    rng = np.random.default_rng(0)
    for label, brightness in enumerate([50, 200]):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(brightness + rng.normal(0, 30, (16, 16, 3)), 0, 255)
            Image.fromarray(pixels.astype("uint8")).save(folder / f"{i}.png")
    return root


@pytest.mark.slow  # ~30-60 s: two joblib workers each import torch
def test_seed_grid_in_parallel_with_dataloader_workers_then_compared(tmp_path):
    images = make_image_folder(tmp_path / "images")
    out = tmp_path / "seeds"
    sweep(out, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2", "model=mlp",
          "data=image_folder", f"data.root={images}", "data.image_size=16", "data.batch_size=8",
          "data.num_workers=1")  # DataLoader workers inside joblib's worker processes

    dirs = trials(out)
    runs = [wandb_run(d) for d in dirs]
    assert [r["state"] for r in runs] == ["finished"] * 3
    assert {r["group"] for r in runs} == {"seeds"}
    assert [r["name"] for r in runs] == ["trial0-seed=0", "trial1-seed=1", "trial2-seed=2"]
    cores = len(os.sched_getaffinity(0))
    assert runs[0]["config"]["trainer"]["num_threads"] == max(1, cores // 2)  # a share each

    report = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_runs.py"), str(out)],
                            capture_output=True, text=True, check=True).stdout
    losses = [json.loads((d / "metrics.json").read_text())["summary"]["best/val_loss"]
              for d in dirs]
    mean, std = statistics.fmean(losses), statistics.stdev(losses)
    assert "Over seeds" in report
    assert f"3  {mean:.4f} ± {std:.4f}" in report
    assert (out / "learning_curves.png").exists()
