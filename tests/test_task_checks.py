"""The preflight keeps its promise for regression and multi-label: the expectations come from the
task (loss at init, the head's constant, the input-blind baseline), the planted bugs are caught
and healthy models pass."""

from __future__ import annotations

import functools

import pytest
import torch
from checks_helpers import checks_cfg
from conftest import ROOT
from hydra import compose, initialize_config_dir
from torch import nn

from nnrecipe.checks import FAIL, PASS, WARN, run_preflight
from nnrecipe.data import build_data
from nnrecipe.models import MLP, init_head_bias
from nnrecipe.tasks import build_task, prepare_targets


@functools.cache
def task_data(data: str):
    """(task, data) as train.py prepares them: targets encoded (regression: standardised)."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["logger=none", f"data={data}"])
    bundle = build_data(cfg.data, 0, "cpu")
    task = build_task(cfg.task)
    prepare_targets(task, bundle)
    return task, bundle


class Squashed(nn.Module):
    """A sigmoid after the head: outputs in (0, 1) where the loss wants raw values/logits."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.sigmoid(self.net(x))


class IgnoresInput(MLP):
    """Forwards zeros instead of x (a wrong variable name): learns the constant only."""

    def forward(self, x):
        return super().forward(torch.zeros_like(x))


def model_for(data: str, kind: str = "healthy", seed: int = 0) -> nn.Module:
    task, bundle = task_data(data)
    torch.manual_seed(seed)
    make = IgnoresInput if kind == "ignores_input" else MLP
    net = make(bundle.num_classes, bundle.in_chans, bundle.image_size)  # model=mlp's sizes
    init_head_bias(net, bundle.train.labels, bundle.num_classes, "prior", task)
    if kind == "hot_init":  # "initialise the head like the trunk": N(0, 1) weights
        nn.init.normal_(net.head.weight, std=1.0)
    return Squashed(net) if kind == "squashed" else net


def preflight(data: str, kind: str):
    task, bundle = task_data(data)
    report = run_preflight(model_for(data, kind), bundle, checks_cfg(), task=task,
                           make_optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=1e-3))
    return {r.name: r for r in report.results}


DATA = ["diabetes", "digits_multilabel"]


@pytest.mark.parametrize("data", DATA)
def test_healthy_models_pass(data):
    results = preflight(data, "healthy")
    assert {n: r.status for n, r in results.items() if r.status != PASS} == {}
    task, bundle = task_data(data)
    expected, why = task.expected_init_loss(bundle.train.labels, bundle.num_classes, True)
    assert f"{expected:.3f}" in results["loss_at_init"].expected and "constant" in why
    if data == "diabetes":  # standardised targets: MSE at the mean is the variance, ~1
        assert expected == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("data", DATA)
def test_hot_init_fails_loss_at_init(data):
    assert preflight(data, "hot_init")["loss_at_init"].status == FAIL


@pytest.mark.parametrize("data", DATA)
def test_squashed_outputs_fail_overfit_one_batch(data):
    results = preflight(data, "squashed")
    assert results["overfit_one_batch"].status == FAIL


@pytest.mark.parametrize("data", DATA)
def test_a_model_that_ignores_its_input_fails_the_baseline(data):
    result = preflight(data, "ignores_input")["input_independent_baseline"]
    assert result.status == FAIL and "ignores its input" in result.message
    assert "acc" not in result.measured  # no accuracy for values or label rows


def test_init_well_says_when_the_head_is_not_at_the_constant():
    task, bundle = task_data("digits_multilabel")
    net = model_for("digits_multilabel")
    nn.init.zeros_(net.head.bias)  # log odds 0: every label at 50%, the labels are not
    report = run_preflight(net, bundle, checks_cfg(skip=["overfit_one_batch", "loss_decreases",
                                                         "input_independent_baseline"]),
                           task=task, head_bias_requested=False)
    init_well = {r.name: r for r in report.results}["init_well"]
    assert init_well.status in (PASS, WARN) and "zero outputs" in init_well.measured
