"""Each task end to end from the entry point on its bundled data: it learns (beats the best
input-blind prediction by a clear margin), logs its own metrics, and returns its objective."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import wandb_inspect

from nnrecipe.errors import UserError

FAST = ("trainer.max_epochs=8", "trainer.num_threads=1")


def metrics_of(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_regression_on_diabetes_beats_the_mean_and_returns_val_mae(run_train):
    value, run_dir = run_train("data=diabetes", "objective=val/mae", *FAST)
    m = metrics_of(run_dir)
    s = m["summary"]
    assert value == s["best/val_mae_at_best_loss"]  # the sweeper gets the objective's metric
    # predicting the training mean (the best input-blind output) has R^2 ~ 0 and MAE ~ 64
    assert s["test/r2"] > 0.3
    assert 30 < s["test/mae"] < 55  # in the target's own units (disease progression 25..346)
    assert s["test/rmse"] >= s["test/mae"]
    assert {"val/loss", "val/mae", "val/rmse", "val/r2"} <= m["history"][0].keys()


def test_regression_reports_the_same_units_without_standardising(run_train):
    _, run_dir = run_train("data=diabetes", "task.standardize_targets=false", "optimizer.lr=0.01",
                           "trainer.max_epochs=4", "trainer.num_threads=1")
    s = metrics_of(run_dir)["summary"]
    assert s["best/val_loss"] > 100  # raw MSE in squared units: why standardising is the default
    assert 20 < s["test/mae"] < 120


def test_binary_classification_on_breast_cancer_beats_the_majority_class(run_train):
    value, run_dir = run_train("data=breast_cancer", "objective=val/acc", *FAST)
    s = metrics_of(run_dir)["summary"]
    assert value == s["best/val_acc_at_best_loss"]
    assert s["test/acc"] > 0.9  # the majority class (benign) is 63%


def test_multilabel_on_digits_beats_the_label_frequencies_and_logs_to_wandb(run_train):
    value, run_dir = run_train("data=digits_multilabel", "objective=val/map",
                               "trainer.max_epochs=3", "trainer.num_threads=1", logger="wandb")
    run = wandb_inspect(run_dir)
    assert run["state"] == "finished" and run["config"]["task"]["_target_"].endswith("MultiLabel")
    summary = run["summary"]
    # an input-blind model ranks every image alike: its mAP is the label frequency (~0.45)
    assert summary["test/map"] > 0.9 and summary["test/f1"] > 0.8
    assert value == pytest.approx(summary["best/val_map_at_best_loss"])
    assert {"best/val_loss", "best/epoch", "best/val_f1_at_best_loss", "test/loss"} <= set(summary)
    assert "best/val_acc_at_best_loss" not in summary and "test/acc" not in summary


def test_data_and_task_that_disagree_fail_with_the_fix(run_cli):
    code, err, _ = run_cli("data=diabetes", "task=classification")
    assert code == 1
    assert "values targets but task=classification" in err and "task=regression" in err


def test_an_objective_the_task_does_not_have_is_refused(run_cli):
    code, err, _ = run_cli("data=diabetes", "objective=val/acc")
    assert code == 1 and "val/mae" in err and "regression" in err


def test_mixup_refuses_targets_that_are_not_classes(run_cli):
    code, err, _ = run_cli("data=diabetes", "augmentation=mixup")
    assert code == 1 and "augmentation=mixup" in err and "values targets" in err


def test_sweep_direction_follows_the_tasks_metric():
    from test_sweeps import compose_with_hydra

    import hydra_plugins.nnrecipe_sweeper.tolerant  # noqa: F401  registers the resolver

    for overrides, direction in [(["data=diabetes", "objective=val/mae"], "minimize"),
                                 (["data=diabetes", "objective=val/r2"], "maximize"),
                                 (["data=digits_multilabel", "objective=val/map"], "maximize"),
                                 (["objective=val/acc"], "maximize")]:
        cfg = compose_with_hydra("hparams_search=random", *overrides)
        assert cfg.hydra.sweeper.direction == direction, overrides


def test_regression_targets_are_standardised_from_the_train_split_only():
    from nnrecipe.data.tabular import diabetes
    from nnrecipe.tasks import Regression, prepare_targets

    data, task = diabetes(seed=0), Regression()
    raw_train, raw_test = data.train.y.clone(), data.test.y.clone()
    prepare_targets(task, data)
    assert data.train.y.shape == (len(raw_train), 1)
    assert data.train.y.mean().abs() < 1e-5 and (data.train.y.std() - 1).abs() < 1e-5
    assert torch.allclose(task.decode(data.test.y)[:, 0], raw_test, atol=1e-3)
    assert task.mean.item() == pytest.approx(raw_train.double().mean().item())


def test_tabular_csv_one_hot_and_missing_values(tmp_path, run_train):
    import numpy as np

    rng = np.random.default_rng(0)
    n = 300
    color = rng.choice(["red", "green", "blue"], n)
    size = rng.normal(10, 3, n)
    price = 5 * size + np.select([color == "red", color == "green"], [20, -20], 0)
    rows = ["size,color,noise,price"] + [
        f"{'' if i == 3 else round(s, 3)},{c},{rng.normal():.3f},{p + rng.normal():.3f}"
        for i, (s, c, p) in enumerate(zip(size, color, price))]
    (tmp_path / "houses.csv").write_text("\n".join(rows))
    with pytest.warns(UserWarning, match="missing values in column 'size'"):
        _, run_dir = run_train("data=tabular", f"data.path={tmp_path / 'houses.csv'}",
                               "data.target=price", "task=regression", "optimizer.lr=0.01",
                               *FAST, run_dir=tmp_path / "run")
    s = metrics_of(run_dir)["summary"]
    assert s["test/r2"] > 0.9  # the one-hot colour and the size explain the price


def test_tabular_names_a_missing_column(tmp_path):
    from nnrecipe.data.tabular import tabular

    (tmp_path / "t.csv").write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(UserError, match="no column price"):
        tabular(path=str(tmp_path / "t.csv"), target="price")


def test_audit_of_regression_data_finds_leaks_and_target_outliers_and_says_what_it_skipped(
        tmp_path):
    from nnrecipe.audit.targets import audit_targets
    from nnrecipe.data.tabular import diabetes

    data = diabetes(seed=0)
    data.test.x[0], data.test.y[0] = data.train.x[5], data.train.y[5]  # a leaked row
    data.val.y[3] = 5000.0  # a typo'd target (disease progression is 25..346)
    f = audit_targets(data, outlier_score=6.0, max_shown=32, run_dir=tmp_path)
    assert f["duplicates"]["across_splits"]["test∩train"] == 1
    assert [(o["split"], o["index"]) for o in f["target_outliers"]] == [("val", 3)]
    assert {"label_issues", "near_duplicates"} <= f["skipped"].keys()
    assert "Skipped" in (tmp_path / "report.md").read_text()


def test_compare_runs_ranks_a_regression_sweep_by_its_objective(tmp_path):
    import yaml

    from nnrecipe import sweeps

    for num, mae in enumerate([50.0, 40.0, 45.0]):
        folder = tmp_path / str(num)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra/overrides.yaml").write_text(yaml.safe_dump([f"optimizer.lr={num}e-3"]))
        (folder / ".hydra/config.yaml").write_text(yaml.safe_dump(
            {"objective": "val/mae", "task": {"_target_": "nnrecipe.tasks.Regression"}}))
        summary = {"best/val_loss": mae / 100, "best/val_mae_at_best_loss": mae,
                   "best/val_rmse_at_best_loss": mae + 10, "best/val_r2_at_best_loss": 0.5,
                   "test/mae": mae + 1}
        sweeps.write_metrics(folder, "finished", objective=mae, summary=summary, history=[])
    report = sweeps.compare(tmp_path)
    header = next(line for line in report.splitlines() if line.split()[:1] == ["rank"])
    assert "val/mae" in header and "test/mae" in header and "val/acc" not in header
    assert "ranked by val/mae (minimize)" in report
    rows = [line.split() for line in report.splitlines() if line.strip()[:1].isdigit()]
    assert [r[1] for r in rows[:3]] == ["1", "2", "0"]  # trial numbers, lowest MAE first


def test_a_table_with_a_rare_category_and_a_constant_column_passes_the_preflight(tmp_path,
                                                                                 run_train):
    import numpy as np

    rng = np.random.default_rng(1)
    n = 400
    cat = rng.choice(["a", "b", "c", "rare"], n, p=[0.4, 0.35, 0.23, 0.02])
    x = rng.normal(size=n)
    y = 2 * x + 3 * (cat == "a") + 0.3 * rng.normal(size=n)
    (tmp_path / "t.csv").write_text("x,cat,const,y\n" + "\n".join(
        f"{a:.6f},{c},7,{b:.6f}" for a, c, b in zip(x, cat, y)))
    with pytest.warns(UserWarning, match="1 feature column"):
        value, run_dir = run_train("data=tabular", f"data.path={tmp_path / 't.csv'}",
                                   "data.target=y", "task=regression", "checks=default",
                                   "checks.only=true", "trainer.num_threads=1",
                                   run_dir=tmp_path / "run")
    checks = metrics_of(run_dir)["checks"]
    assert value is None and set(checks.values()) == {"PASS"}, checks
