"""Each check fails on the bug it exists for: models and data broken the way people break them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from checks_helpers import digits, preflight, with_train
from torch import nn

from nnrecipe.checks import FAIL, PASS, check_loss_at_init, check_output_shape, expected_init_loss
from nnrecipe.models import ConvNet


class Trunk(nn.Module):
    """conv-BN-ReLU features of 8x8 digits -> [B, 32 * 4]."""

    def __init__(self, width=32):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())

    def forward(self, x):
        return self.net(x)


class SoftmaxBeforeLoss(nn.Module):
    """Returns probabilities, and the training loss (cross-entropy) applies softmax again."""

    def __init__(self):
        super().__init__()
        self.trunk, self.head = Trunk(), nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.trunk(x)).softmax(dim=1)


class OverScaledHead(nn.Module):
    """'Initialise the head like the trunk': N(0, 1) weights make confident random logits."""

    def __init__(self):
        super().__init__()
        self.trunk, self.head = Trunk(), nn.Linear(128, 10)
        nn.init.normal_(self.head.weight, std=1.0)

    def forward(self, x):
        return self.head(self.trunk(x))


class FrozenTrunk(nn.Module):
    """Meant to save memory at eval time; the no_grad stays on during training."""

    def __init__(self):
        super().__init__()
        self.trunk, self.head = Trunk(), nn.Linear(128, 10)

    def forward(self, x):
        with torch.no_grad():
            features = self.trunk(x)
        return self.head(features)


class AlwaysDropout(nn.Module):
    """Functional dropout with training=True: still random in eval mode."""

    def __init__(self):
        super().__init__()
        self.trunk, self.head = Trunk(), nn.Linear(128, 10)

    def forward(self, x):
        return self.head(F.dropout(self.trunk(x), 0.3, training=True))


class SeqFirstAttention(nn.Module):
    """Tokens [B, T, D] handed to a seq-first attention with view() where permute() was meant:
    the 'sequence' it attends over is made of other samples."""

    def __init__(self, dim=32):
        super().__init__()
        self.embed = nn.Conv2d(1, dim, 2, stride=2)  # 8x8 -> 16 tokens
        self.attn = nn.MultiheadAttention(dim, 4)    # batch_first=False
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # [B, T, D]
        b, t, d = tokens.shape
        seq = tokens.reshape(t, b, d)                      # bug: permute(1, 0, 2)
        out, _ = self.attn(seq, seq, seq)
        return self.head(out.reshape(b, t, d).mean(1))


class LogFeatures(nn.Module):
    """'Log-compress' the normalised input: log of negative values is NaN."""

    def __init__(self):
        super().__init__()
        self.trunk, self.head = Trunk(), nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.trunk(torch.log(x + 0.5)))


class OneClassShort(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.trunk, self.head = Trunk(), nn.Linear(128, num_classes - 1)  # range(1, num_classes)

    def forward(self, x):
        return self.head(self.trunk(x))


class IgnoresInput(nn.Module):
    """Adds a learned 'bias image' and then, by a typo, uses it instead of the input."""

    def __init__(self):
        super().__init__()
        self.bias_image = nn.Parameter(torch.zeros(1, 1, 8, 8))
        self.trunk, self.head = Trunk(), nn.Linear(128, 10)

    def forward(self, x):
        shifted = x + self.bias_image
        return self.head(self.trunk(self.bias_image.expand_as(shifted)))


def statuses(report):
    return {r.name: r.status for r in report.results}


def test_softmax_before_cross_entropy_cannot_overfit_one_batch():
    torch.manual_seed(0)
    report = preflight(SoftmaxBeforeLoss())
    assert report["overfit_one_batch"].status == FAIL
    assert "softmax" in report["overfit_one_batch"].message


def test_over_scaled_head_init_fails_loss_at_init():
    torch.manual_seed(0)
    report = preflight(OverScaledHead())
    r = report["loss_at_init"]
    assert r.status == FAIL, r
    assert float(r.measured.split()[0]) > 1.5 * math.log(10)


def test_trunk_under_no_grad_fails_gradient_flow_and_names_the_trunk():
    torch.manual_seed(0)
    report = preflight(FrozenTrunk())
    assert report["gradient_flow"].status == FAIL
    assert "trunk.net.0.weight" in report["gradient_flow"].message
    assert report["batch_independence"].status == FAIL  # output blind to its own input


def test_functional_dropout_in_eval_fails_eval_determinism():
    torch.manual_seed(0)
    report = preflight(AlwaysDropout())
    assert report["eval_determinism"].status == FAIL


def test_view_instead_of_permute_fails_batch_independence():
    torch.manual_seed(0)
    report = preflight(SeqFirstAttention())
    r = report["batch_independence"]
    assert r.status == FAIL and "other samples" in r.message


def test_nan_from_log_of_negative_is_located():
    torch.manual_seed(0)
    report = preflight(LogFeatures())
    assert report["loss_at_init"].status == FAIL
    r = report["gradient_flow"]
    assert r.status == FAIL
    assert "trunk" in r.message and "NaN" in r.message  # where it first appears


def test_model_that_ignores_its_input_fails_the_input_independent_baseline():
    torch.manual_seed(0)
    report = preflight(IgnoresInput())
    assert report["input_independent_baseline"].status == FAIL
    assert report["batch_independence"].status == FAIL


def test_head_one_class_short_fails_output_shape():
    torch.manual_seed(0)
    x = digits().train.x[:4]
    assert check_output_shape(OneClassShort(), x, 10).status == FAIL
    assert check_output_shape(ConvNet(10, 1), x, 10).status == PASS


def test_labels_shuffled_against_inputs_fail_the_baseline():
    data = digits()
    g = torch.Generator().manual_seed(1)
    shuffled = with_train(data, y=data.train.y[torch.randperm(len(data.train), generator=g)])
    torch.manual_seed(0)
    report = preflight(ConvNet(10, 1), data=shuffled)
    assert report["input_independent_baseline"].status == FAIL


@pytest.mark.parametrize("scale", [1 / 255, 255.0])
def test_wrong_normalisation_std_fails_data_batch(scale):
    data = digits()
    wrong = with_train(data, x=data.train.x * scale)  # std * 255, or raw 0..255 pixels
    torch.manual_seed(0)
    report = preflight(ConvNet(10, 1), data=wrong, skip=["leakage"])
    assert report["data_batch"].status == FAIL
    assert "normalis" in report["data_batch"].message


@pytest.mark.parametrize("lr", [10.0, 1e-9])
def test_learning_rate_far_off_fails_loss_decreases(lr):
    torch.manual_seed(0)
    report = preflight(ConvNet(10, 1), lr=lr)
    assert report["loss_decreases"].status == FAIL
    assert report["overfit_one_batch"].status != PASS


def test_validation_copied_from_train_fails_leakage():
    data = digits()
    leaky = with_train(data)
    leaky.val.x = leaky.train.x[: len(leaky.val)].clone()
    torch.manual_seed(0)
    report = preflight(ConvNet(10, 1), data=leaky, skip=["input_independent_baseline"])
    r = report["leakage"]
    assert r.status == FAIL and f"val∩train: {len(leaky.val)}" in r.measured


def test_nan_in_the_data_and_float_labels_fail_data_batch():
    data = digits()
    x = data.train.x.clone()
    x[:, :, 0, 0] = float("nan")
    report = preflight(ConvNet(10, 1), data=with_train(data, x=x),
                       skip=["leakage", "overfit_one_batch", "loss_decreases",
                             "input_independent_baseline", "gradient_flow", "loss_at_init"])
    assert report["data_batch"].status == FAIL and "NaN" in report["data_batch"].message


def test_loss_at_init_expects_the_prior_entropy_when_the_bias_is_the_log_prior():
    torch.manual_seed(0)
    labels = torch.tensor([0] * 90 + [1] * 10)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    nn.init.zeros_(model[1].weight)
    assert expected_init_loss(model, labels, 2)[0] == pytest.approx(math.log(2))
    model[1].bias.data = torch.tensor([0.9, 0.1]).log()
    expected, why = expected_init_loss(model, labels, 2)
    assert expected == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)), abs=1e-4)
    assert "prior" in why
    x = torch.randn(100, 1, 2, 2)
    assert check_loss_at_init(model, [(x, labels)], expected, why).status == PASS
    model[1].bias.data = torch.tensor([0.1, 0.9]).log()  # the prior backwards: confidently wrong
    assert check_loss_at_init(model, [(x, labels)], expected, why).status == FAIL


def test_val_split_preprocessed_differently_fails_data_batch():
    data = digits()
    unnormalised_val = with_train(data)
    unnormalised_val.val.x = data.denormalize(data.val.x)  # forgot to normalise val
    report = preflight(ConvNet(10, 1), data=unnormalised_val, skip=["leakage"])
    r = report["data_batch"]
    assert r.status == FAIL and "val inputs" in r.message


def test_forward_that_changes_its_input_in_place_fails_eval_determinism():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk, self.head = Trunk(), nn.Linear(128, 10)

        def forward(self, x):
            x.mul_(0.5).add_(0.1)  # "rescale" written in place: edits the caller's tensor
            return self.head(self.trunk(x))

    data = with_train(digits())
    val = data.val.x.clone()
    torch.manual_seed(0)
    report = preflight(InPlace(), data=data, skip=["leakage"])
    assert torch.equal(data.val.x, val)  # the checks work on copies of the batches
    assert report["eval_determinism"].status == FAIL
    assert "in place" in report["eval_determinism"].message


def test_a_single_class_in_the_training_labels_fails_data_batch():
    data = digits()
    one_class = with_train(data, y=torch.zeros_like(data.train.y))
    report = preflight(ConvNet(10, 1), data=one_class, skip=["leakage"])
    assert report["data_batch"].status == FAIL and "never occur" in report["data_batch"].message
