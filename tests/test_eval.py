"""src/eval.py: a finished run scored again from its checkpoint's own config."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import ROOT


def load_eval_module():
    spec = importlib.util.spec_from_file_location("nnrecipe_eval_entry", ROOT / "src" / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def eval_cfg():
    from hydra import compose, initialize_config_dir

    def _compose(*overrides):
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            return compose("eval", overrides=["logger=none", *overrides])

    return _compose


def test_eval_reproduces_the_training_runs_test_accuracy(run_train, eval_cfg, tmp_path):
    _, run_dir = run_train("trainer.max_epochs=2", "trainer.checkpoint_every_s=0")
    trained = json.loads((run_dir / "metrics.json").read_text())["summary"]
    out = tmp_path / "eval"
    out.mkdir()
    scores = load_eval_module().evaluate_run(eval_cfg(f"checkpoint={run_dir}"), out)
    assert scores["test"]["acc"] == trained["test/acc"]  # exactly: same weights, same data
    assert scores["test"]["loss"] == pytest.approx(trained["test/loss"], rel=1e-5)
    assert scores["val"]["loss"] == pytest.approx(trained["best/val_loss"], rel=1e-5)
    low, high = scores["test"]["acc_ci"]
    assert low < scores["test"]["acc"] < high and high - low < 0.2
    assert sum(n for _, n, _, _ in scores["test"]["per_class"]) == scores["test"]["n"]
    assert (out / "confusion.png").stat().st_size > 0
    saved = json.loads((out / "eval.json").read_text())
    assert saved["test"]["acc"] == trained["test/acc"]


def test_eval_of_a_missing_checkpoint_says_what_to_give(eval_cfg, tmp_path):
    from nnrecipe.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        load_eval_module().evaluate_run(eval_cfg(f"checkpoint={tmp_path}/nothing.pt"), tmp_path)


def test_wilson_interval_matches_the_textbook_values():
    from nnrecipe.squeeze import wilson_interval

    # Wilson (1927) / Newcombe (1998), table I: 81/263 -> [0.2553, 0.3662]
    low, high = wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    low, high = wilson_interval(10, 10)  # 100%: the interval keeps a width, inside [0, 1]
    assert high == pytest.approx(1.0) and 0.65 < low < 0.75


def test_the_interval_of_a_mean_loss_stays_at_or_above_zero():
    from nnrecipe.squeeze import mean_interval

    low, high = mean_interval([0.0] * 99 + [5.0])  # skewed: mean 0.05, sd 0.5
    assert low == 0.0 and 0.05 < high < 0.2
    low, _ = mean_interval([-1.0, 1.0, 0.5])  # a signed quantity keeps its normal interval
    assert low < 0


def test_eval_is_a_wandb_run_of_job_type_eval(run_train, eval_cfg, tmp_path, monkeypatch):
    from nnrecipe.tracking import Tracker

    calls = {}

    class Recording(Tracker):
        def summary(self, values):
            calls["summary"] = values

        def image(self, key, path, caption=None, step=None):
            calls.setdefault("images", []).append(key)

    module = load_eval_module()
    monkeypatch.setattr(module, "start_tracking",
                        lambda *a, **k: calls.update(k) or Recording())
    _, run_dir = run_train("trainer.max_epochs=1", "model=linear")
    module.evaluate_run(eval_cfg(f"checkpoint={run_dir}", "logger=wandb"), tmp_path)
    assert calls["job_type"] == "eval"
    assert calls["images"] == ["val/confusion", "test/confusion"]
    assert {"test/acc", "test/acc_ci_low", "val/loss_ci_high"} <= set(calls["summary"])


def test_per_sample_losses_add_up_to_the_tasks_summed_loss():
    import torch

    from nnrecipe.squeeze.scoring import metrics, per_sample_loss
    from nnrecipe.tasks import Classification, Regression

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(40, 5, generator=g), torch.randint(0, 5, (40,), generator=g)
    for task, out, target in [(Classification(), logits, y),
                              (Regression(), logits[:, :2], logits[:, 2:4])]:
        per = per_sample_loss(task, out, target)
        assert per.shape == (40,)
        assert per.mean().item() == pytest.approx(metrics(task, out, target)["loss"], rel=1e-5)


def test_the_command_line_says_one_line_and_exits_1_on_a_bad_checkpoint(tmp_path, capsys):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("eval", overrides=["logger=none", f"checkpoint={tmp_path}/garbage.pt"],
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "out")
        HydraConfig.instance().set_config(cfg)
        del cfg["hydra"]
    try:
        with pytest.raises(SystemExit) as stop:
            load_eval_module().main(cfg)
    finally:
        HydraConfig.instance().cfg = None
    err = capsys.readouterr().err
    assert stop.value.code == 1
    (line,) = [line for line in err.splitlines() if line.startswith("nnrecipe: error:")]
    assert f"checkpoint {tmp_path}/garbage.pt is unreadable" in line
    assert "Traceback" not in err
