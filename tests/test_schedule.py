"""The learning-rate schedules have the shapes their names promise."""

import pytest
import torch
from omegaconf import OmegaConf

from nnrecipe.optim import Schedule


def lrs(steps, epoch_losses=None, steps_per_epoch=10, max_epochs=10, **cfg):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = Schedule(OmegaConf.create(cfg), opt, steps_per_epoch, max_epochs)
    out = []
    for i in range(steps):
        out.append(schedule.lr)
        schedule.step()
        if epoch_losses and (i + 1) % steps_per_epoch == 0:
            schedule.epoch_end(epoch_losses[i // steps_per_epoch])
    return out


def test_constant_with_linear_warmup():
    lr = lrs(30, name="constant", warmup_epochs=1.0)
    assert lr[0] == pytest.approx(0.1) and lr[9] == 1.0 and lr[29] == 1.0
    assert all(b > a for a, b in zip(lr[:9], lr[1:10]))


def test_cosine_decays_to_the_floor():
    lr = lrs(100, name="cosine", warmup_epochs=0.0, min_lr_ratio=0.1)
    assert lr[0] == 1.0 and lr[50] == pytest.approx(0.55, abs=0.02)
    assert lr[99] == pytest.approx(0.1, abs=0.01) and lr == sorted(lr, reverse=True)


def test_step_multiplies_by_gamma():
    lr = lrs(60, name="step", warmup_epochs=0.0, step_epochs=2, gamma=0.5)
    assert lr[19] == 1.0 and lr[20] == 0.5 and lr[40] == 0.25


def test_plateau_cuts_after_patience_and_resumes():
    losses = [1.0, 0.9, 0.9, 0.9, 0.9, 0.9]
    lr = lrs(60, losses, name="plateau", warmup_epochs=0.0, factor=0.1, patience=2, threshold=0)
    assert lr[49] == 1.0 and lr[50] == pytest.approx(0.1)


@pytest.mark.parametrize("cfg", [
    dict(name="cosine", warmup_epochs=1.0, min_lr_ratio=0.1),
    dict(name="plateau", warmup_epochs=0.0, factor=0.5, patience=0, threshold=0),
])
def test_a_restored_schedule_continues_with_the_same_lrs(cfg):
    def make():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return Schedule(OmegaConf.create(cfg), opt, steps_per_epoch=10, max_epochs=6)

    def run(schedule, start, stop):
        out = []
        for i in range(start, stop):
            out.append(schedule.lr)
            schedule.step()
            if (i + 1) % 10 == 0:
                schedule.epoch_end(1.0)  # no progress: plateau cuts after every epoch
        return out

    first = make()
    before = run(first, 0, 30)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    assert before + run(resumed, 30, 60) == run(make(), 0, 60)


def schedule(max_epochs, **cfg):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return Schedule(OmegaConf.create(cfg), opt, steps_per_epoch=10, max_epochs=max_epochs)


def trace(s, steps):
    out = []
    for i in range(steps):
        out.append(s.lr)
        s.step()
        if (i + 1) % 10 == 0:
            s.epoch_end(1.0)
    return out


COSINE = dict(name="cosine", warmup_epochs=0.0, min_lr_ratio=0.1)


def test_a_longer_resumed_cosine_keeps_its_shape_and_says_the_lr_stays_at_min_lr(caplog):
    first = schedule(2, **COSINE)
    before = trace(first, 10)  # one of two epochs
    resumed = schedule(4, **COSINE)  # trainer.max_epochs 2 -> 4
    resumed.load_state_dict(first.state_dict())
    assert before + trace(resumed, 30) == trace(schedule(2, **COSINE), 40)  # no jump back up
    assert ("schedule cosine was shaped for 2 epochs (the checkpoint's trainer.max_epochs) and "
            "continues on that shape, not on trainer.max_epochs=4: the lr stays at min_lr "
            "(0.1 x lr = 0.1) from epoch 3 to 4") in caplog.text
    assert "start a new run from these weights" in caplog.text


def test_a_shorter_resumed_cosine_says_where_the_decay_stops(caplog):
    first = schedule(4, **COSINE)
    trace(first, 10)
    resumed = schedule(2, **COSINE)
    resumed.load_state_dict(first.state_dict())
    assert "training stops at epoch 2 with the lr at 0.55 x lr" in caplog.text
    assert resumed.lr == pytest.approx(schedule(4, **COSINE).multiplier(10))


@pytest.mark.parametrize("cfg", [
    dict(name="constant", warmup_epochs=1.5),
    dict(name="step", warmup_epochs=0.0, step_epochs=1, gamma=0.5),
    dict(name="plateau", warmup_epochs=0.0, factor=0.5, patience=0, threshold=0),
], ids=lambda c: c["name"])
def test_schedules_that_ignore_max_epochs_resume_longer_without_a_warning(cfg, caplog):
    first = schedule(2, **cfg)
    before = trace(first, 10)
    resumed = schedule(4, **cfg)
    resumed.load_state_dict(first.state_dict())
    assert before + trace(resumed, 30) == trace(schedule(4, **cfg), 40)
    assert "shaped for" not in caplog.text
