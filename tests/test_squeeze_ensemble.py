"""scripts/ensemble.py and nnrecipe.squeeze.ensemble: averages of finished runs."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from conftest import ROOT
from squeeze_helpers import seed_overrides, train_run

from nnrecipe.errors import UserError


def load_script():
    spec = importlib.util.spec_from_file_location("ensemble_script",
                                                  ROOT / "scripts" / "ensemble.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def three_seeds(train_module, tmp_path_factory):
    """A 'sweep' folder of three 2-epoch digits runs that differ in their seed."""
    sweep = tmp_path_factory.mktemp("sweep")
    for s in range(3):
        train_run(train_module, sweep / str(s), "trainer.max_epochs=2", *seed_overrides(s))
    return sweep


def test_an_ensemble_of_three_seeds_beats_its_mean_member(three_seeds, tmp_path, capsys):
    code = load_script().main([str(three_seeds), "--logger", "none", "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "ensemble.json").read_text())
    rows = result["rows"]
    assert len(result["members"]) == 3
    ensemble, mean = rows["ensemble of all 3"]["test"], rows["mean member"]["test"]
    assert ensemble["loss"] < mean["loss"]
    members = [rows[str(s)]["test"]["loss"] for s in range(3)]
    assert mean["loss"] == pytest.approx(sum(members) / 3)
    trained = [json.loads((three_seeds / str(s) / "metrics.json").read_text())["summary"]
               for s in range(3)]
    assert [rows[str(s)]["test"]["acc"] for s in range(3)] == [t["test/acc"] for t in trained]
    assert "acc_ci_low" in ensemble and "greedy ensemble" in capsys.readouterr().out


def test_members_scored_on_other_samples_are_refused(train_module, three_seeds, tmp_path):
    other = train_run(train_module, tmp_path / "other", "trainer.max_epochs=1",
                      "data.val_fraction=0.2")
    code = load_script().main([str(three_seeds / "0"), str(other), "--logger", "none",
                               "--out", str(tmp_path / "e")])
    assert code == 1
    with pytest.raises(UserError, match="different val/test samples.*data.val_fraction"):
        from nnrecipe import runtime
        from nnrecipe.squeeze import ensemble

        ensemble.load_pool([three_seeds / "0", other], runtime.pick_device("cpu"))


def test_greedy_selection_keeps_what_lowers_the_val_loss():
    from nnrecipe.squeeze.ensemble import Member, Pool, greedy_selection
    from nnrecipe.squeeze.runs import Run
    from nnrecipe.tasks import Classification

    y = torch.tensor([0, 1, 0, 1])
    good = torch.tensor([[2.0, 0], [0, 2], [2, 0], [0, 2]])
    noisy = torch.tensor([[1.0, 0], [0, 1], [0, 1], [0, 1]])   # wrong on the third
    awful = -good                                               # confidently wrong everywhere
    task = Classification()
    members = []
    for i, o in enumerate([noisy, awful, good]):
        m = Member(Run(str(i), None, {}, {}), {"val": o, "test": o})
        m.scores = {"val": {"loss": task.loss(o, y).item()}}
        members.append(m)
    pool = Pool(members, {"val": y, "test": y}, task, None, torch.device("cpu"))
    chosen = greedy_selection(pool)
    assert chosen[0] == 2 and 1 not in chosen


def test_soup_averages_weights_and_needs_one_architecture():
    from nnrecipe.squeeze.ensemble import average_weights

    a = {"w": torch.ones(2), "n": torch.tensor(3)}
    b = {"w": torch.zeros(2), "n": torch.tensor(5)}
    soup = average_weights([a, b])
    assert soup["w"].tolist() == [0.5, 0.5] and soup["n"].item() == 3
    with pytest.raises(UserError, match="same architecture"):
        average_weights([a, {"w": torch.ones(3), "n": torch.tensor(1)}])


def test_top_k_keeps_the_best_members_and_the_run_is_an_ensemble_job(three_seeds, tmp_path,
                                                                      monkeypatch):
    import nnrecipe.tracking
    from nnrecipe.tracking import Tracker

    calls = {}

    class Recording(Tracker):
        def summary(self, values):
            calls["summary"] = values

    def start(logger_cfg, run_dir, config, **kwargs):
        calls.update(kwargs)
        return Recording()

    monkeypatch.setattr(nnrecipe.tracking, "start_tracking", start)
    assert load_script().main([str(three_seeds), "--top", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "ensemble.json").read_text())
    losses = {str(s): result["rows"][str(s)]["val"]["loss"] for s in range(3)
              if str(s) in result["rows"]}
    assert len(result["members"]) == 2 == len(losses)
    worst = max(range(3), key=lambda s: json.loads(
        (three_seeds / str(s) / "metrics.json").read_text())["summary"]["best/val_loss"])
    assert str(worst) not in losses
    assert calls["job_type"] == "ensemble" and "test/acc_ci_low" in calls["summary"]


def test_a_soup_of_fine_tunes_from_one_init_beats_its_mean_member(train_module, tmp_path):
    from nnrecipe import runtime
    from nnrecipe.squeeze import ensemble, scoring

    base = train_run(train_module, tmp_path / "base", "trainer.max_epochs=2", "optimizer.lr=3e-3")
    for s in (1, 2, 3):
        variation = seed_overrides(s)[:1] + (["data.split_seed=0"] if "data.split_seed=0" in
                                             seed_overrides(s) else [f"model.dropout={s / 10}"])
        train_run(train_module, tmp_path / "tunes" / str(s), "trainer.max_epochs=1",
                  f"model.init_from={base}", "optimizer.lr=1e-3", *variation)
    pool = ensemble.load_pool([tmp_path / "tunes"], runtime.pick_device("cpu"))
    assert ensemble.shared_init(pool)
    soup = ensemble.soup_outputs(pool, [0, 1, 2])
    soup_loss = scoring.metrics(pool.task, soup["val"], pool.targets["val"])["loss"]
    mean_loss = sum(m.scores["val"]["loss"] for m in pool.members) / 3
    assert soup_loss < mean_loss


def test_a_folder_without_runs_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert load_script().main([str(tmp_path / "empty"), "--logger", "none"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ensemble: error:") and "holds no run" in err
    assert load_script().main([str(tmp_path / "nothing"), "--logger", "none"]) == 1
    assert "does not exist" in capsys.readouterr().err
