"""Shared by the checks tests: the digits data, the checks config, one preflight call."""

from __future__ import annotations

import copy

import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nnrecipe.checks import Report, run_preflight
from nnrecipe.data import build_data
from nnrecipe.models import init_head_bias

_DATA = {}
torch.set_num_threads(1)  # 2 shared cores: more threads than free cores slows torch 10x+


def checks_cfg(**overrides):
    """The checks config at its full sizes (budget_s null): a verdict must not depend on how
    busy the machine is; tests of the budget set budget_s themselves."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["logger=none"]).checks
    OmegaConf.set_struct(cfg, False)
    cfg.strict = False
    cfg.budget_s = None
    cfg.update(overrides)
    return cfg


def digits():
    """Normalised digits, built once per session; callers that change it take a deepcopy."""
    if "digits" not in _DATA:
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=["logger=none"])
        _DATA["digits"] = build_data(cfg.data, 0, "cpu")
    return _DATA["digits"]


def preflight(model, data=None, lr=3e-4, seed=0, optimizer=torch.optim.Adam, **cfg) -> Report:
    data = data or digits()
    init_head_bias(model, data.train.labels, data.num_classes)
    return run_preflight(
        model, data, checks_cfg(**cfg), seed=seed,
        make_optimizer=lambda m: optimizer([p for p in m.parameters() if p.requires_grad], lr=lr),
    )


def with_train(data, x=None, y=None):
    """A copy of `data` whose train split has other inputs or labels."""
    data = copy.deepcopy(data)
    if x is not None:
        data.train.x = x
    if y is not None:
        data.train.y = y
    return data
