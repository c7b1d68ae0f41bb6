"""Distillation: the loss Hinton et al. wrote, teacher outputs looked up once for in-memory
data, and a student that learns from the teacher agrees with it more."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from squeeze_helpers import train_run

from nnrecipe.errors import UserError
from nnrecipe.squeeze.distill import Distiller, Lookup, build_distiller
from nnrecipe.tasks import Classification


def test_lookup_returns_precomputed_outputs_and_asks_the_teacher_for_new_images():
    x = torch.randn(50, 1, 4, 4)
    teacher_calls = []

    def teacher(batch):
        teacher_calls.append(len(batch))
        return batch.flatten(1)[:, :3] * 2

    distiller = Distiller(teacher, Classification(), 0.5, 4.0, Lookup(x, teacher(x)))
    teacher_calls.clear()
    idx = torch.randperm(50)[:16]
    batch = x[idx].clone()
    batch[:3] += 0.5  # "augmented": not in the table
    out = distiller.teacher_outputs(batch)
    assert torch.allclose(out, teacher(batch))
    assert teacher_calls[0] == 3  # only the changed images went through the teacher


def test_the_loss_is_alpha_task_plus_t2_kl():
    g = torch.Generator().manual_seed(0)
    s, t, y = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g), torch.arange(8) % 5
    d = Distiller(lambda x: t, Classification(), alpha=0.3, temperature=2.0)
    loss = d.loss(s, y, torch.zeros(8, 1))
    kl = F.kl_div(F.log_softmax(s / 2, -1), F.softmax(t / 2, -1), reduction="batchmean") * 4
    assert loss.item() == pytest.approx(0.3 * F.cross_entropy(s, y).item() + 0.7 * kl.item(),
                                        rel=1e-5)
    assert set(d.last_parts) == {"train/loss_task", "train/loss_distill"}
    with pytest.raises(UserError, match="distill.alpha"):
        Distiller(None, Classification(), alpha=1.5, temperature=1.0)


def test_a_teacher_run_is_looked_up_exactly_and_must_share_the_split(train_module, tmp_path):
    from squeeze_helpers import compose

    from nnrecipe.data import build_data

    teacher_dir = train_run(train_module, tmp_path / "teacher", "trainer.max_epochs=1")
    cfg = compose()
    data = build_data(cfg.data, cfg.seed, "cpu")
    distiller = build_distiller(OmegaConf.create({"teacher": [str(teacher_dir)], "alpha": 0.5,
                                                  "temperature": 4.0}), data, "cpu",
                                Classification())
    assert distiller.lookup is not None  # digits are in memory: computed once, looked up
    batch = data.train.x[torch.randperm(len(data.train.x))[:64]]
    assert torch.equal(distiller.teacher_outputs(batch), distiller.teacher(batch))
    other = compose("data.test_fraction=0.2")
    with pytest.raises(UserError, match="other splits"):
        build_distiller(OmegaConf.create({"teacher": str(teacher_dir), "alpha": 0.5,
                                          "temperature": 4.0}),
                        build_data(other.data, other.seed, "cpu"), "cpu", Classification())


def test_lookup_finds_every_stored_row_whatever_the_rounding_of_its_batch():
    g = torch.Generator().manual_seed(0)
    for _ in range(300):  # one draw in five used to land a key a hair above its stored twin
        x = torch.randn(50, 1, 4, 4, generator=g)
        lookup = Lookup(x, torch.arange(50.0)[:, None])
        idx = torch.randperm(50, generator=g)[:16]
        found, out = lookup.find(x[idx])
        assert found.all() and torch.equal(out[:, 0].long(), idx)
