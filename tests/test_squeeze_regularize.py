"""Regularizers of recipe step 4 that live outside the model: weight decay that skips biases
and norm parameters, label smoothing."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from nnrecipe.models import ConvNet
from nnrecipe.optim import build_optimizer


def groups(optimizer, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return [(g["weight_decay"], sorted(names[id(p)] for p in g["params"]))
            for g in optimizer.param_groups]


def test_biases_and_norm_parameters_get_no_weight_decay():
    model = ConvNet(10, in_chans=1, widths=[4])
    cfg = OmegaConf.create({"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 0.05,
                            "decay_norm_and_bias": False})
    (decay, decayed), (none, exempt) = groups(build_optimizer(cfg, model), model)
    assert decay == 0.05 and none == 0.0
    assert decayed == ["features.0.weight", "features.3.weight", "head.weight"]
    assert "head.bias" in exempt and "features.1.weight" in exempt  # BatchNorm's scale
    assert len(decayed) + len(exempt) == len(list(model.parameters()))
    cfg.decay_norm_and_bias = True  # torch's own behaviour: one group, all decayed
    assert [d for d, _ in groups(build_optimizer(cfg, model), model)] == [0.05]


def test_decay_skipping_biases_leaves_them_alone_where_weights_shrink():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    cfg = OmegaConf.create({"_target_": "torch.optim.AdamW", "lr": 0.1, "weight_decay": 0.5,
                            "decay_norm_and_bias": False})
    opt = build_optimizer(cfg, model)
    bias, weight = model.bias.detach().clone(), model.weight.detach().clone()
    (model.weight.sum() * 0).backward()  # zero gradients: only the decay moves anything
    model.bias.grad = torch.zeros_like(model.bias)
    opt.step()
    assert torch.equal(model.bias, bias)
    assert torch.allclose(model.weight, weight * (1 - 0.1 * 0.5))


def test_label_smoothing_raises_the_loss_floor_as_theory_says():
    """With smoothing eps the best an overfit batch can reach is the entropy of the smoothed
    target, H = -(1-eps+eps/C) log(1-eps+eps/C) - (C-1)(eps/C) log(eps/C), at logits = log of
    that target (the loss is convex in the logits: zero gradient there means the minimum)."""
    from nnrecipe.tasks import Classification

    c, eps = 10, 0.1
    y = torch.arange(16) % c
    top, rest = 1 - eps + eps / c, eps / c
    target = torch.full((16, c), rest).scatter_(1, y[:, None], top)
    logits = target.log().requires_grad_()
    task = Classification(label_smoothing=eps)
    loss = task.loss(logits, y)
    loss.backward()
    floor = -top * math.log(top) - (c - 1) * rest * math.log(rest)
    assert loss.item() == pytest.approx(floor, rel=1e-5) and floor > 0.5
    assert logits.grad.abs().max() < 1e-6
    sharper = (logits.detach() * 3).requires_grad_()  # more confident: smoothing punishes it
    assert task.loss(sharper, y).item() > floor
    assert Classification().loss(sharper.detach() * 10, y).item() < 1e-3  # unsmoothed: -> 0
