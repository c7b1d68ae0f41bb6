"""The preflight at size: a time budget it fits by shortening the training checks (and says
so), one model copy at a time, out of memory as a WARN, single-class data named."""

from __future__ import annotations

import weakref

import pytest
import torch
from checks_helpers import digits, preflight
from torch import nn

from nnrecipe.checks import FAIL, PASS, WARN
from nnrecipe.checks.budget import MIN_STEPS, full_plan, plan_checks
from nnrecipe.data import DataBundle, TensorSplit
from nnrecipe.errors import UserError
from nnrecipe.models import ConvNet

TRAININGS = ("overfit_one_batch", "loss_decreases", "input_independent_baseline")


def test_a_tight_budget_shortens_the_training_checks_and_says_which():
    report = preflight(ConvNet(10, 1), budget_s=0.01)
    for name in TRAININGS:
        assert report[name].shortened, name
        assert "shortened to fit checks.budget_s=0.01" in report[name].message
        assert report[name].status != FAIL, report[name]  # a few steps prove too little to FAIL
    assert not any(report[n].shortened for n in ("data_batch", "gradient_flow"))
    summary = report.table().splitlines()[-1]
    assert "budget 0.01 s; shortened to fit: " + ", ".join(TRAININGS) in summary
    assert f"over {MIN_STEPS} steps" in report["loss_decreases"].measured  # the floor


def test_a_budget_that_fits_shortens_nothing():
    report = preflight(ConvNet(10, 1), budget_s=600.0)
    assert not any(r.shortened for r in report.results)
    assert {r.status for r in report.results} == {PASS}
    assert "shortened" not in report.table()


def test_the_plan_shrinks_samples_before_steps():
    from checks_helpers import checks_cfg

    full = full_plan(checks_cfg(), batch=32, steps=60)
    # ~14 ms a sample (the convnet on 64x64 images, one core): 60 steps of 32 do not fit
    plan = plan_checks(full, seconds_left=10.0, per_sample=0.014, budget_s=15.0)
    assert plan.batch < 32 and plan.overfit_samples < 16
    assert plan.steps <= 60 and plan.steps >= MIN_STEPS
    roomy = plan_checks(full, seconds_left=1e6, per_sample=0.014, budget_s=15.0)
    assert (roomy.batch, roomy.steps, roomy.overfit_samples) == (32, 60, 16)
    assert roomy.shortened("loss_decreases") == ""


class Counted(nn.Module):
    """A small convnet that notes how many of its copies are alive whenever one runs."""

    alive: weakref.WeakSet = weakref.WeakSet()
    most = 0

    def __init__(self):
        super().__init__()
        self.net = ConvNet(10, 1)

    def forward(self, x):
        Counted.alive.add(self)
        Counted.most = max(Counted.most, len(Counted.alive))
        return self.net(x)


def test_at_most_one_copy_of_the_model_besides_the_users():
    model = Counted()
    Counted.alive.add(model)
    Counted.most = 0
    report = preflight(model)
    assert {r.status for r in report.results} == {PASS}
    assert Counted.most <= 2  # the user's model and one copy (with its optimizer)


class OutOfMemoryWhenTraining(nn.Module):
    """Fits for inference, not for training: what a big model on a small GPU does."""

    def __init__(self, error: Exception):
        super().__init__()
        self.net = ConvNet(10, 1)
        self.error = error

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            raise self.error
        return self.net(x)


@pytest.mark.parametrize(("error", "needed"), [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB "
                            "total capacity)"), "2.00 GiB"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                  "memory: you tried to allocate 3221225472 bytes. Error code 12"), "3.00 GiB"),
], ids=["cuda", "cpu"])
def test_out_of_memory_in_a_check_is_a_warn_naming_the_check_and_the_memory(error, needed):
    report = preflight(OutOfMemoryWhenTraining(error), strict=True)  # would raise on a FAIL
    short = [r for r in report.results if r.status == WARN]
    assert {r.name for r in short} >= {"gradient_flow", *TRAININGS}
    for r in short:
        assert r.message.startswith(f"{r.name} ran out of memory") and needed in r.message
    assert not report.failures
    assert report["output_shape"].status == PASS  # inference fits: those checks still ran


def test_a_single_class_is_named_whatever_the_checks_say():
    x = torch.rand(40, 1, 8, 8)
    split = TensorSplit(x, torch.zeros(40, dtype=torch.long))
    data = DataBundle(split, split, split, class_names=["cat"], in_chans=1, image_size=8,
                      mean=[0.5], std=[0.3])
    for enabled in (True, False):
        with pytest.raises(UserError, match="only one class was found .*'cat'"):
            preflight(ConvNet(1, 1), data=data, enabled=enabled)


def test_healthy_digits_keep_their_full_sizes_under_the_default_budget():
    """The digits and the default convnet cost well under a millisecond a step: nothing to cut
    (the budget only bites at size)."""
    from checks_helpers import checks_cfg

    assert checks_cfg().budget_s is None  # the helper: full sizes
    report = preflight(ConvNet(10, 1), budget_s=15.0)
    assert report.budget_s == 15.0 and digits().num_classes == 10
    assert all(r.status == PASS for r in report.results), report.table()


def test_leakage_uses_the_hashes_a_split_carries_without_reading_a_file(tmp_path):
    from nnrecipe.checks import check_leakage
    from nnrecipe.data import FileSplit

    def split(names, hashes):
        s = FileSplit(tmp_path / "gone", [f"{n}.png" for n in names], [0] * len(names))
        s.hashes = hashes  # as a file index provides them; the files do not exist
        return s

    splits = {"train": split("abcd", ["h1", "h2", "h3", "h4"]),
              "val": split("ef", ["h5", "h2"]), "test": split("g", ["h7"])}
    r = check_leakage(splits)
    assert r.status == FAIL and "val∩train: 1" in r.measured and "index's hashes" in r.measured
    del splits["val"].hashes  # one split without: every split is hashed from its files
    assert check_leakage(splits).status == FAIL  # the files are missing: the check says so


class ThreadsSeen(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = ConvNet(10, 1)
        self.seen = set()

    def forward(self, x):
        self.seen.add(torch.get_num_threads())
        return self.net(x)


@pytest.mark.parametrize(("idle", "expected"), [(1, 1), (8, 2)], ids=["busy", "idle"])
def test_the_checks_use_the_trainers_threads_fewer_on_busy_cores(monkeypatch, idle, expected):
    from nnrecipe import runtime

    monkeypatch.setattr(runtime, "auto_threads", lambda sharing=1: (idle, "test"))
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the trainer's
    try:
        model = ThreadsSeen()
        preflight(model, skip=list(TRAININGS))
    finally:
        torch.set_num_threads(before)
    assert model.seen == {expected}
