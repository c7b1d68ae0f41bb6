"""EMA of the weights: differs from the raw weights, warms up, and resumes exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from nnrecipe.errors import UserError
from nnrecipe.squeeze.ema import Ema, build_ema


def train_steps(model, ema, steps, start=0):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # stateless: resumes from the weights
    for step in range(start + 1, start + steps + 1):
        g = torch.Generator().manual_seed(step)  # each step's batch fixed by its number
        x, y = torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        ema.update(model, step)


def test_ema_weights_differ_from_raw_and_average_them():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    start = model.weight.detach().clone()
    ema = Ema(model, decay=0.9)
    train_steps(model, ema, 20)
    avg, raw = ema.module.weight, model.weight
    assert not torch.allclose(avg, raw)
    # an average of the path: between the start and the end, closer to the end
    assert (avg - raw).norm() < (start - raw).norm()
    assert ema.ema.get_decay(1) == 0.0 and ema.ema.get_decay(10 ** 6) == 0.9  # warmup, then cap


def test_ema_resumes_exactly():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    straight_model, straight = copy.deepcopy(model), Ema(copy.deepcopy(model), 0.95)
    train_steps(straight_model, straight, 6)

    first = Ema(model, 0.95)
    train_steps(model, first, 3)
    saved_model, saved_ema = copy.deepcopy(model.state_dict()), first.state_dict()
    resumed_model = torch.nn.Linear(4, 3)
    resumed_model.load_state_dict(saved_model)
    resumed = Ema(resumed_model, 0.95)
    resumed.load_state_dict(saved_ema)
    train_steps(resumed_model, resumed, 3, start=3)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_ema_config():
    model = torch.nn.Linear(2, 2)
    assert build_ema(OmegaConf.create({"ema": {"decay": None}}), model) is None
    assert build_ema(OmegaConf.create({}), model) is None
    with pytest.raises(UserError, match="trainer.ema.evaluate_with"):
        build_ema(OmegaConf.create({"ema": {"decay": 0.9, "evaluate_with": "best"}}), model)
    with pytest.raises(UserError, match="trainer.ema.decay=1.5"):
        build_ema(OmegaConf.create({"ema": {"decay": 1.5}}), model)
