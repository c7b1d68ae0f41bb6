"""Sweeps in-process: search configs, trial identity, failure accounting, offline comparison."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from nnrecipe import runtime, sweeps
from nnrecipe.errors import UserError
from nnrecipe.loop import Diverged

ROOT = Path(__file__).resolve().parents[1]
WANDB = Path(sys.executable).with_name("wandb")


def wandb_summary(run_dir: Path) -> dict:
    """state, config and summary of the one offline W&B run under run_dir, via W&B's CLI."""
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    out = subprocess.run([str(WANDB), "leet", "inspect", "--summary", "--json", str(offline)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


# --- search configs ----------------------------------------------------------------------------


@pytest.mark.parametrize("search", ["random", "tpe"])
def test_search_configs_sample_every_swept_key_of_every_model(compose_cfg, search):
    import hydra_plugins.nnrecipe_sweeper.tolerant  # noqa: F401  registers objective_direction

    cfg = compose_with_hydra(f"hparams_search={search}", "objective=val/acc")
    sweeper = cfg.hydra.sweeper
    assert sweeper.direction == "maximize"  # follows the objective
    assert sweeper.sampler.seed == 0 and 0 < sweeper.max_failure_rate < 1
    sampler = "RandomSampler" if search == "random" else "TPESampler"
    assert sweeper.sampler._target_.endswith(sampler)
    params = sweeper.params
    assert params["optimizer.lr"].startswith("tag(log")
    models = params["model"].removeprefix("choice(").removesuffix(")").split(",")
    for model in (m.strip() for m in models):  # model.dropout must exist for every choice
        model_cfg = compose_cfg(f"model={model}").model
        for key in (k for k in params if k.startswith("model.")):
            assert key.removeprefix("model.") in model_cfg, f"model={model} has no {key}"
    assert cfg.objective == "val/acc"


def compose_with_hydra(*overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_slurm_preset_is_a_submitit_slurm_launcher():
    launcher = compose_with_hydra("hydra/launcher=slurm").hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.timeout_min > 0


def test_objective_is_checked_and_picks_the_metric():
    assert sweeps.objective_direction("val/loss") == "minimize"
    assert sweeps.objective_direction("val/acc") == "maximize"
    assert sweeps.objective_value("val/acc", {"loss": 0.3, "acc": 0.9}) == 0.9
    with pytest.raises(UserError, match="val/loss, val/acc"):
        sweeps.objective_direction("val/los")


# --- a trial's identity ------------------------------------------------------------------------


def test_swept_keys_come_from_the_sweep_and_the_command_line_wins(tmp_path):
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweeper": {"params": {"optimizer.lr": "tag(log, interval(1e-4, 1e-2))",
                               "model": "choice(convnet, mlp)"}},
        "overrides": {"task": ["hparams_search=random", "model=mlp", "seed=0,1,2"]},
    }}))
    assert sweeps.swept_keys(tmp_path) == ["optimizer.lr", "seed"]  # model=mlp: not swept
    assert sweeps.swept_keys(tmp_path / "missing") == []


def test_trial_name_carries_number_and_short_values():
    name = sweeps.trial_name(3, {"model": "mlp", "optimizer.lr": "0.0012345678",
                                 "data.batch_size": "64", "seed": "1"})
    assert name == "trial3-mlp-lr=0.00123-batch_size=64-seed=1"


# --- failures ----------------------------------------------------------------------------------


def test_a_diverging_run_is_a_failed_wandb_run_with_a_failed_metrics_file(run_train, tmp_path):
    with pytest.raises(Diverged):
        run_train("model=mlp", "optimizer=sgd", "optimizer.lr=1e6", "trainer.max_epochs=1",
                  logger="wandb")
    run = wandb_summary(tmp_path / "run")
    assert run["state"] == "failed"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "Diverged" in metrics["error"]


def test_objective_val_acc_returns_the_best_epochs_accuracy(run_train, tmp_path):
    value, run_dir = run_train("model=linear", "optimizer.lr=0.01", "trainer.max_epochs=2",
                               "objective=val/acc")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and len(metrics["history"]) == 2
    best = min(metrics["history"], key=lambda h: h["val/loss"])  # the best.pt epoch
    assert value == best["val/acc"] == metrics["objective"]
    assert 0.8 < value <= 1.0  # a linear model learns digits within two epochs at lr 0.01


def _job(status, value, num=0):
    ret = JobReturn(status=status, _return_value=value)
    ret.hydra_cfg = OmegaConf.create({"hydra": {"job": {"num": num}}})
    return ret


class FakeLauncher:
    def __init__(self, batches):
        self.batches = iter(batches)

    def launch(self, job_overrides, initial_job_idx):
        return next(self.batches)


def test_failures_are_counted_over_the_whole_sweep_not_per_batch(capsys):
    from hydra_plugins.nnrecipe_sweeper.tolerant import FailureCountingLauncher

    boom = Diverged("train/loss became nan")
    batches = [[_job(JobStatus.FAILED, boom)],               # 1 of 1 failed: stock 1.3.0 stops
               [_job(JobStatus.COMPLETED, 0.5)],
               [_job(JobStatus.COMPLETED, math.nan)],        # NaN: a failure, never a value
               [_job(JobStatus.FAILED, boom)]]
    launcher = FailureCountingLauncher(FakeLauncher(batches), allowed_failures=2)
    assert launcher.launch([()], 0)[0].status == JobStatus.FAILED
    assert launcher.launch([()], 1)[0].return_value == 0.5
    nan_job = launcher.launch([()], 2)[0]
    assert nan_job.status == JobStatus.FAILED  # so Optuna records FAIL instead of crashing
    with pytest.raises(ValueError, match="not a finite number"):
        _ = nan_job.return_value
    with pytest.raises(SystemExit) as stop:  # the third failure is one more than allowed
        launcher.launch([()], 3)
    assert stop.value.code == 1 and launcher.failures == 3
    assert "nnrecipe: error: the sweep stopped after 3 failed trials" in capsys.readouterr().err
    bug = FailureCountingLauncher(FakeLauncher([[_job(JobStatus.FAILED, KeyError("x"))]]), 0)
    with pytest.raises(KeyError):  # not a user's mistake: its traceback
        bug.launch([()], 0)


def test_parallel_trials_spread_over_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert [runtime.spread_over_gpus("auto", n) for n in range(3)] == ["cuda:0", "cuda:1",
                                                                       "cuda:0"]
    assert chosen == [0, 1, 0]
    assert runtime.spread_over_gpus("cpu", 1) == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert runtime.spread_over_gpus("auto", 1) == "auto"


def test_parallel_trials_share_the_cores(monkeypatch):
    monkeypatch.setattr(runtime, "cores", lambda: 16)
    assert runtime.share_cores(None, 4) == 4
    assert runtime.share_cores(None, -1) == 1  # joblib's n_jobs=-1: one trial per core
    assert runtime.share_cores(None, 32) == 1
    assert runtime.share_cores(None, None) is None  # sequential: all cores
    assert runtime.share_cores(8, 4) == 8  # set by the user: kept


# --- offline comparison ------------------------------------------------------------------------


def fake_trial(sweep: Path, num: int, overrides: list[str], val_loss: float | None,
               objective: str = "val/loss", split_hash: str | None = None) -> None:
    folder = sweep / str(num)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra/overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra/config.yaml").write_text(yaml.safe_dump({"objective": objective}))
    if val_loss is None:
        sweeps.write_metrics(folder, "failed", error="Diverged: train/loss became nan")
        return
    acc = 1 - val_loss / 2
    summary = {"best/val_loss": val_loss, "best/val_acc_at_best_loss": acc,
               "test/acc": acc - 0.01}
    history = [{"epoch": 1, "val/loss": val_loss + 0.5, "val/acc": acc - 0.1},
               {"epoch": 2, "val/loss": val_loss, "val/acc": acc}]
    sweeps.write_metrics(folder, "finished", objective=val_loss, summary=summary,
                         history=history, **({"split_hash": split_hash} if split_hash else {}))


def test_compare_ranks_trials_lists_failures_and_plots(tmp_path, monkeypatch):
    from nnrecipe import plots

    losses = {0: 0.9, 1: 0.3, 2: None, 3: 0.6}
    for num, loss in losses.items():
        model = "mlp" if num % 2 else "convnet"
        overrides = [f"optimizer.lr={10.0 ** -(num + 1)}", f"model={model}", "trainer.max_epochs=2"]
        fake_trial(tmp_path, num, overrides, loss)
    drawn = {}
    draw = plots.scatter_panels
    monkeypatch.setattr(plots, "scatter_panels", lambda *a, **k: drawn.update(k) or draw(*a, **k))
    report = sweeps.compare(tmp_path, top=2)
    assert drawn["failed"] == {"optimizer.lr": [0.001], "model": ["convnet"]}  # where it failed
    lines = report.splitlines()
    rows = [line.split() for line in lines if line.strip()[:1].isdigit() or
            line.strip().startswith("-")]
    assert [r[1] for r in rows] == ["1", "3", "0", "2"]  # ranked by val/loss, failed last
    assert rows[0][:3] == ["1", "1", "0.3000"] and rows[-1][:3] == ["-", "2", "failed"]
    assert "trainer.max_epochs" not in report  # the same for every trial: not a swept column
    header = next(line for line in lines if line.lstrip().startswith("rank "))
    assert "optimizer.lr" in header and "model" in header
    assert "trial 2 failed: Diverged" in report
    assert (tmp_path / "objective_vs_hparams.png").stat().st_size > 1000
    assert (tmp_path / "learning_curves.png").stat().st_size > 1000


def test_compare_aggregates_seeds_per_configuration(tmp_path):
    values = {("0.01", 0): 0.30, ("0.01", 1): 0.34, ("0.1", 0): 0.80, ("0.1", 1): 0.90}
    for num, ((lr, seed), loss) in enumerate(values.items()):
        fake_trial(tmp_path, num, [f"seed={seed}", f"optimizer.lr={lr}"], loss)
    trials = sweeps.load_sweep(tmp_path)
    groups = sweeps.aggregate_seeds(trials, sweeps.varying_keys(trials), "minimize")
    assert [g.values for g in groups] == [{"optimizer.lr": "0.01"}, {"optimizer.lr": "0.1"}]
    mean, std = groups[0].stats["val/loss"]
    assert mean == pytest.approx(0.32) and std == pytest.approx(0.028284, abs=1e-5)
    assert "0.3200 ± 0.0283" in sweeps.compare(tmp_path)


def test_compare_says_the_seeds_share_a_test_set_and_warns_when_splits_differ(tmp_path):
    same = tmp_path / "same"
    for num, seed in enumerate([0, 1]):
        fake_trial(same, num, [f"seed={seed}"], 0.3 + seed / 10, split_hash="ab12")
    report = sweeps.compare(same)
    assert "every trial scored on the same test set, split ab12" in report
    assert "WARNING" not in report

    mixed = tmp_path / "mixed"  # seeds that also drew the split (before data.split_seed)
    for num, (seed, split) in enumerate([(0, "ab12"), (1, "cd34"), (2, "ab12")]):
        fake_trial(mixed, num, [f"seed={seed}"], 0.3 + seed / 10, split_hash=split)
    report = sweeps.compare(mixed)
    assert ("WARNING: the trials were scored on 2 different data splits (split ab12: trials 0, "
            "2; split cd34: trial 1)") in report
    header = next(line for line in report.splitlines() if line.lstrip().startswith("rank "))
    assert header.split()[-1] == "split"
    groups = sweeps.aggregate_seeds(sweeps.load_sweep(mixed), ["seed"], "minimize")
    assert sorted(len(g.trials) for g in groups) == [1, 2]  # never averaged across splits
    assert {g.trials[0].split_hash for g in groups} == {"ab12", "cd34"}


def test_log_sampled_keys_get_a_log_axis_whatever_their_span(tmp_path, monkeypatch):
    from nnrecipe import plots

    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweeper": {"params": {"optimizer.lr": "tag(log, interval(1e-3, 3e-3))",
                               "model.dropout": "interval(0, 0.5)"}},
        "overrides": {"task": ["hparams_search=random"]}}}))
    for num, (lr, dropout) in enumerate([(1e-3, 0.1), (2e-3, 0.3), (2.9e-3, 0.2)]):
        fake_trial(tmp_path, num, [f"optimizer.lr={lr}", f"model.dropout={dropout}"], 0.5 + lr)
    drawn = {}
    draw = plots.scatter_panels
    monkeypatch.setattr(plots, "scatter_panels",
                        lambda *a, **k: drawn.update(k) or draw(*a, **k))
    sweeps.compare(tmp_path)
    assert drawn["log_x"] == {"optimizer.lr"}  # a 3x span: below the 10x rule, log all the same


def test_compare_maximises_val_acc_when_that_is_the_objective(tmp_path):
    for num, loss in enumerate([0.2, 0.8]):
        fake_trial(tmp_path, num, [f"seed={num}"], loss, objective="val/acc")
        metrics = json.loads((tmp_path / str(num) / "metrics.json").read_text())
        sweeps.write_metrics(tmp_path / str(num), "finished", **{
            **{k: v for k, v in metrics.items() if k != "status"},
            "objective": metrics["summary"]["best/val_acc_at_best_loss"]})
    ranked = sweeps.rank(sweeps.load_sweep(tmp_path), "maximize")
    assert [t.num for t in ranked] == [0, 1]  # val/acc 0.9 before 0.6


def test_compare_runs_script_says_what_is_wrong_with_a_folder(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    import compare_runs

    assert compare_runs.main([str(tmp_path)]) == 1
    assert "holds no trial folders" in capsys.readouterr().err
