"""Real sweeps, end to end: `python src/train.py -m ...` as a user runs it, offline, 1 epoch.

The only end-to-end tests of the failure-tolerant sweeper and of the joblib launcher: kept short
(few trials, checks and W&B off where another test covers them) rather than hidden from CI."""

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
    env = {**os.environ, "WANDB_MODE": "offline",  # not WANDB_SILENT: trials must be quiet anyway
           "PYTHONPATH": str(ROOT / "src")}  # launcher workers import this checkout's nnrecipe
    env.pop("WANDB_SILENT", None)
    cmd = [sys.executable, str(ROOT / "src" / "train.py"), "-m", *overrides,
           "trainer.max_epochs=1", "trainer.progress=false", f"hydra.sweep.dir={sweep_dir}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        pytest.fail(f"sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def wandb_run(trial_dir: Path) -> dict:
    """The W&B run of one trial, from its records read back with W&B's CLI: name, group, job
    type, tags, config, summary and state. One CLI call (each costs seconds), not two."""
    (offline,) = (trial_dir / "wandb").glob("offline-run-*")
    out = subprocess.run([str(WANDB), "leet", "inspect", "--json", str(offline)],
                         capture_output=True, text=True, check=True).stdout
    records = [json.loads(line) for line in out.splitlines() if line]
    run = next(r["run"] for r in records if r["type"] == "run")
    config, summary, exit_code = dict(run["config"]["update"]), {}, None
    for r in records:
        if r["type"] in ("config", "summary"):
            (config if r["type"] == "config" else summary).update(r[r["type"]]["update"])
        elif r["type"] == "exit":
            exit_code = r["exit"].get("exit_code", 0)
    state = {None: "running", 0: "finished"}.get(exit_code, "failed")
    return {"name": run["display_name"], "group": run.get("run_group"),
            "job_type": run.get("job_type"), "tags": run.get("tags", []), "config": config,
            "summary": summary, "state": state}


def trials(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def overrides_of(trial_dir: Path) -> dict[str, str]:
    pairs = yaml.safe_load((trial_dir / ".hydra/overrides.yaml").read_text())
    return dict(o.split("=", 1) for o in pairs)


def test_random_search_three_trials_three_wandb_runs_in_one_group_one_line_each(tmp_path):
    out = tmp_path / "lr-sweep"
    done = sweep(out, "hparams_search=random", "hydra.sweeper.n_trials=3", "model=mlp",
                 "checks=default")

    swept = ["optimizer.lr", "optimizer.weight_decay", "data.batch_size", "model.dropout"]
    dirs = trials(out)
    assert len(dirs) == 3
    sampled = [tuple(overrides_of(d)[k] for k in swept) for d in dirs]
    assert len(set(sampled)) == 3  # three distinct sampled configurations
    # the console: Hydra's two launch lines, the preflight summary and one result line a trial
    # (was ~70 lines a trial: W&B's blocks and the whole preflight table); train.log keeps all
    console = (done.stdout + done.stderr).splitlines()
    assert len(console) <= 7 + 4 * 3, "\n".join(console)
    assert sum("preflight: 11 checks" in line for line in console) == 3
    assert sum("val/loss" in line and "test/acc" in line for line in console) == 3
    assert not [line for line in console if line.startswith("wandb:")]
    assert "input_independent_baseline PASS" in (dirs[0] / "train.log").read_text()
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
        assert {"best/val_loss", "best/val_acc_at_best_loss", "test/acc"} <= run["summary"].keys()

    best = yaml.safe_load((out / "optimization_results.yaml").read_text())
    losses = {d.name: json.loads((d / "metrics.json").read_text())["objective"] for d in dirs}
    best_trial = min(losses, key=losses.get)
    assert best["best_value"] == pytest.approx(losses[best_trial])
    assert best["best_params"]["optimizer.lr"] == pytest.approx(
        float(overrides_of(out / best_trial)["optimizer.lr"]))


def test_diverging_trials_fail_and_the_sweep_goes_on(tmp_path):
    """W&B off: a diverged run's failed W&B run is tested in-process (test_sweeps)."""
    out = tmp_path / "sweep"
    done = sweep(out, "hparams_search=random", "hydra.sweeper.n_trials=4",
                 "hydra.sweeper.max_failure_rate=0.75", "model=mlp", "optimizer=sgd",
                 "optimizer.lr=choice(0.01, 1e6)",  # SGD at lr 1e6: NaN within a few steps
                 "logger=none", "checks=off")
    assert done.returncode == 0
    status = {d.name: json.loads((d / "metrics.json").read_text())["status"] for d in trials(out)}
    assert len(status) == 4
    assert "failed" in status.values() and "finished" in status.values()
    for name, state in status.items():
        lr = float(overrides_of(out / name)["optimizer.lr"])
        assert state == ("failed" if lr > 1 else "finished")
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


def test_seed_grid_in_parallel_with_dataloader_workers_then_compared(tmp_path, capsys):
    """Two joblib workers (each imports torch: the longest test) run a grid of two seeds."""
    images = make_image_folder(tmp_path / "images")
    out = tmp_path / "seeds"
    sweep(out, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", "model=mlp",
          "data=image_folder", f"data.root={images}", "data.image_size=16", "data.batch_size=8",
          "data.num_workers=1", "checks=off")  # DataLoader workers inside joblib's workers

    dirs = trials(out)
    runs = [wandb_run(d) for d in dirs]
    assert [r["state"] for r in runs] == ["finished"] * 2
    assert {r["group"] for r in runs} == {"seeds"}
    assert [r["name"] for r in runs] == ["trial0-seed=0", "trial1-seed=1"]
    cores = len(os.sched_getaffinity(0))
    assert runs[0]["config"]["trainer"]["num_threads"] == max(1, cores // 2)  # a share each

    sys.path.insert(0, str(ROOT / "scripts"))
    import compare_runs  # the script's own main(), in this process: no second start-up

    assert compare_runs.main([str(out)]) == 0
    report = capsys.readouterr().out
    losses = [json.loads((d / "metrics.json").read_text())["summary"]["best/val_loss"]
              for d in dirs]
    mean, std = statistics.fmean(losses), statistics.stdev(losses)
    assert "Over seeds" in report
    assert f"2  {mean:.4f} ± {std:.4f}" in report
    assert (out / "learning_curves.png").exists()
