"""No false alarm: healthy models pass every check, over several seeds."""

from __future__ import annotations

import pytest
import torch
from checks_helpers import digits, preflight
from torch import nn

from nnrecipe.checks import FAIL, PASS
from nnrecipe.data import DataBundle, TensorSplit
from nnrecipe.models import MLP, ConvNet, Linear


class TinyTransformer(nn.Module):
    """A small ViT: patches + positions -> one batch-first pre-norm encoder layer -> mean
    over tokens -> LayerNorm -> head."""

    def __init__(self, num_classes=10, in_chans=1, dim=32, patch=2, tokens=16):
        super().__init__()
        self.embed = nn.Conv2d(in_chans, dim, patch, stride=patch)
        self.pos = nn.Parameter(0.02 * torch.randn(1, tokens, dim))
        self.encoder = nn.TransformerEncoderLayer(dim, 4, 64, dropout=0.1, batch_first=True,
                                                  norm_first=True)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # [B, T, D]
        return self.head(self.norm(self.encoder(tokens).mean(1)))


def assert_healthy(report):
    bad = [(r.name, r.status, r.measured, r.message) for r in report.results if r.status != PASS]
    assert not bad, bad


MODELS = {
    "convnet": lambda: ConvNet(10, 1),
    "mlp": lambda: MLP(10, 1, 8),
    "linear": lambda: Linear(10, 1, 8),
    "dropout_bn": lambda: ConvNet(10, 1, dropout=0.5),
    "transformer": lambda: TinyTransformer(),
}


@pytest.mark.parametrize("name,seed", [
    *((name, seed) for name in ("convnet", "mlp", "linear", "dropout_bn", "transformer")
      for seed in (0, 1, 2)),
])
def test_healthy_models_pass_every_check(name, seed):
    make = MODELS[name]
    torch.manual_seed(seed)
    assert_healthy(preflight(make(), seed=seed))


@pytest.mark.parametrize("optimizer,lr", [
    (lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True), 0.05),
    (torch.optim.AdamW, 1e-3),
], ids=["sgd", "adamw"])
def test_the_configured_optimizers_pass(optimizer, lr):
    torch.manual_seed(0)
    assert_healthy(preflight(ConvNet(10, 1), optimizer=optimizer, lr=lr))


def synthetic_rgb(seed=0, n=600, size=32) -> DataBundle:
    """Learnable 3x32x32 images: class prototypes + noise, normalised."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(10, 3, size, size, generator=g)
    y = torch.arange(n) % 10
    x = protos[y] + torch.randn(n, 3, size, size, generator=g)
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    splits = [TensorSplit(x[i::3].contiguous(), y[i::3].contiguous()) for i in range(3)]
    return DataBundle(*splits, class_names=[str(c) for c in range(10)], in_chans=3,
                      image_size=size, mean=[0.0] * 3, std=[1.0] * 3, batch_size=32)


@pytest.mark.parametrize("seed,rgb", [(0, False), (0, True)], ids=["digits-0", "rgb32-0"])
def test_timm_resnet18_with_batchnorm_passes(seed, rgb):
    from nnrecipe.models import timm_model

    torch.manual_seed(seed)
    data = synthetic_rgb(seed) if rgb else digits()
    model = timm_model("resnet18", num_classes=10, in_chans=data.in_chans)
    assert_healthy(preflight(model, data=data, seed=seed))  # its time: a bench, not a test


def test_no_check_fails_on_a_timm_resnet_with_zero_initialised_gates():
    """timm zero-initialises the last BatchNorm of each block: gradient_flow must not flag it."""
    from nnrecipe.models import timm_model

    torch.manual_seed(0)
    model = timm_model("resnet10t", num_classes=10, in_chans=1)
    report = preflight(model, data=digits(), skip=["overfit_one_batch", "loss_decreases",
                                                   "input_independent_baseline"])
    assert report["gradient_flow"].status == PASS, report["gradient_flow"]
    assert not [r for r in report.results if r.status == FAIL]


def test_optimizer_like_gives_a_copy_the_same_groups_and_leaves_the_original_alone():
    import copy

    from checks_helpers import checks_cfg

    from nnrecipe.checks import optimizer_like, run_preflight

    torch.manual_seed(0)
    model = MLP(10, 1, 8)
    original = torch.optim.SGD([{"params": model.body.parameters(), "lr": 0.1},
                                {"params": model.head.parameters(), "lr": 0.01}], momentum=0.9)
    twin = copy.deepcopy(model)
    made = optimizer_like(original, model)(twin)
    assert [g["lr"] for g in made.param_groups] == [0.1, 0.01]
    assert made.param_groups[1]["params"][0] is twin.head.weight
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = run_preflight(model, digits(), checks_cfg(),
                           make_optimizer=optimizer_like(original, model))
    assert report["overfit_one_batch"].status == PASS
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not original.state  # the real optimizer never stepped
