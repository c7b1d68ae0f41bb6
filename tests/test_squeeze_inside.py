"""Pictures of the inside: first-layer filters and per-layer activation statistics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nnrecipe.models import ConvNet, Linear
from nnrecipe.squeeze.inside import Inside, filter_images


def sgd_steps(model, steps=5):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_recording_changes_nothing_and_measures_updates(tmp_path):
    torch.manual_seed(0)
    model = ConvNet(10, in_chans=1, widths=[8, 16])
    inside = Inside(model, torch.randn(32, 1, 8, 8), tmp_path)
    bn = model.features[1].running_mean.clone()
    rng = torch.get_rng_state()
    sgd_steps(model)
    after_steps_bn = model.features[1].running_mean.clone()
    record = inside.record(model, epoch=1, step=5)
    assert torch.equal(torch.get_rng_state(), rng)  # no random numbers drawn by the record
    assert torch.equal(model.features[1].running_mean, after_steps_bn) and model.training
    assert not torch.equal(bn, after_steps_bn)  # (the steps did move them)
    conv = record["layers"]["features.0"]
    assert conv["update_ratio"] > 0 and math.isfinite(conv["std"])
    assert inside.records[0]["layers"]["features.0"]["update_ratio"] != inside.records[0][
        "layers"]["features.0"]["update_ratio"]  # NaN at the start: no update yet
    paths = inside.finish(model, epoch=1, step=5)
    assert [p.name for p in paths] == ["filters.png", "activations.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_dead_units_are_counted():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[1].bias[:4] = -1e3  # half the hidden units can never be positive
    inside = Inside(model, torch.randn(32, 1, 8, 8), "unused")
    assert inside.records[0]["layers"]["2"]["dead"] == 0.5


def test_first_layer_filters_of_a_linear_model_are_images_of_the_input():
    model = Linear(10, in_chans=1, image_size=8)
    images = filter_images(model, (1, 8, 8))
    assert images.shape == (10, 1, 8, 8)
    assert images.amin().item() == 0.0 and images.amax().item() == 1.0
    conv = filter_images(ConvNet(10, in_chans=3, widths=[8]), (3, 8, 8))
    assert conv.shape == (8, 3, 3, 3)


def test_a_layer_followed_by_an_in_place_relu_is_measured_before_it():
    torch.manual_seed(0)
    model = ConvNet(10, in_chans=1, widths=[8], batchnorm=False)  # conv -> ReLU(inplace=True)
    x = torch.randn(16, 1, 8, 8)
    inside = Inside(model, x, "unused")
    conv_out = model.features[0](x)
    assert inside.records[0]["layers"]["features.0"]["mean"] == pytest.approx(
        conv_out.mean().item(), abs=1e-6)
