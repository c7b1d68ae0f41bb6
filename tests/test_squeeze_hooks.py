"""End-to-end tests of the squeeze pieces the training loop calls (src/nnrecipe/loop.py and
src/train.py): EMA, a frozen trunk, distillation, the pictures of the inside, the test
accuracy's interval."""

from __future__ import annotations

import json

import pytest
import torch
from squeeze_helpers import seed_overrides, train_run


def last_pt(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)


def test_ema_is_evaluated_each_epoch_and_saved(train_module, tmp_path):
    run = train_run(train_module, tmp_path / "ema", "trainer.max_epochs=2",
                    "trainer.ema.decay=0.9")
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert all("val/loss_ema" in h and "val/acc_ema" in h for h in history)
    state = last_pt(run)
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items()}
    assert not torch.equal(ema["head.weight"], state["model"]["head.weight"])


def test_a_frozen_trunk_keeps_the_weights_it_started_from(train_module, tmp_path):
    base = train_run(train_module, tmp_path / "base", "trainer.max_epochs=1")
    tuned = train_run(train_module, tmp_path / "tuned", "trainer.max_epochs=1",
                      f"model.init_from={base}", "model.freeze_epochs=1", "seed=1")
    start = torch.load(base / "checkpoints" / "best.pt", weights_only=False)["model"]
    end = last_pt(tuned)["model"]
    assert torch.equal(end["features.0.weight"], start["features.0.weight"])
    assert not torch.equal(end["head.weight"], start["head.weight"])


def test_distillation_logs_both_parts_of_the_loss(train_module, tmp_path, recorder):
    sweep = tmp_path / "teachers"
    for s in range(2):
        train_run(train_module, sweep / str(s), "trainer.max_epochs=2", *seed_overrides(s))
    tracker = recorder()
    train_run(train_module, tmp_path / "student", "trainer.max_epochs=1", "model=mlp",
              f"distill.teacher={sweep}")
    assert tracker.series("train/loss_distill") and tracker.series("train/loss_task")


def test_a_run_draws_its_inside(train_module, tmp_path):
    run = train_run(train_module, tmp_path / "run", "trainer.max_epochs=2",
                    "inside.every_n_epochs=1")
    assert (run / "filters.png").exists() and (run / "activations.png").exists()


def test_the_summary_has_the_test_accuracys_interval(train_module, tmp_path):
    run = train_run(train_module, tmp_path / "run", "trainer.max_epochs=1")
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    assert summary["test/acc_ci_low"] < summary["test/acc"] < summary["test/acc_ci_high"]


def test_eval_of_an_ema_run_scores_the_ema_weights_as_training_did(train_module, tmp_path):
    from test_eval import load_eval_module

    from nnrecipe.squeeze import runs

    run = train_run(train_module, tmp_path / "ema", "trainer.max_epochs=2",
                    "trainer.ema.decay=0.9")
    trained = json.loads((run / "metrics.json").read_text())["summary"]
    raw = torch.load(run / "checkpoints" / "best.pt", weights_only=False)["model"]
    assert not torch.equal(runs.load_run(run).weights["head.weight"], raw["head.weight"])
    from conftest import ROOT
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("eval", overrides=["logger=none", f"checkpoint={run}"])
    scores = load_eval_module().evaluate_run(cfg, tmp_path)
    assert scores["test"]["acc"] == trained["test/acc"]


def test_an_ema_run_stopped_and_resumed_ends_as_the_run_never_stopped(run_train, recorder,
                                                                       tmp_path):
    """The average is in last.pt and restored: 2 + 2 epochs give the 4-epoch run's EMA weights,
    its history (val/loss_ema included) and its best epoch (picked by the EMA's val/loss)."""
    from conftest import Interrupted

    common = ["model=mlp", "model.dropout=0.2", "trainer.max_epochs=4",
              "trainer.checkpoint_every_s=0", "trainer.ema.decay=0.9",
              "trainer.num_threads=1"]  # compared bit for bit: one thread count
    recorder()
    four, d4 = run_train(*common, run_dir=tmp_path / "four")
    recorder(stop_after_epoch=2)
    with pytest.raises(Interrupted):
        run_train(*common, run_dir=tmp_path / "two")
    recorder()
    resumed, dr = run_train(*common, f"trainer.resume={tmp_path / 'two'}",
                            run_dir=tmp_path / "resumed")
    assert resumed == four
    a, b = (torch.load(d / "checkpoints" / "last.pt", weights_only=False) for d in (d4, dr))
    assert a["fit_state"]["history"] == b["fit_state"]["history"]
    assert a["fit_state"]["best_val_loss"] == a["fit_state"]["history"][
        a["fit_state"]["best_epoch"] - 1]["val/loss_ema"]
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
