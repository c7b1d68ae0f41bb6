"""build_model: instantiate the configured model and prove its output fits the data."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from nnrecipe.errors import UserError, instantiate
from nnrecipe.tasks import Classification
from nnrecipe.tasks.classification import class_prior  # noqa: F401  (its old home: re-exported)

# Keys of conf/model/*.yaml that nnrecipe acts on, not arguments of the model's class.
OWN_KEYS = ("init_from", "freeze_epochs")


def build_model(cfg: DictConfig, example: torch.Tensor, num_classes: int,
                task=None) -> nn.Module:
    """Build from `_target_` and check, on a 2-sample example batch, that its output fits the
    task's contract (nnrecipe.tasks; None: classification): [batch, num_classes] floats, where
    num_classes is the number of outputs (classes, regression targets, labels); then load
    model.init_from's weights, if given."""
    model = instantiate(_without(cfg, OWN_KEYS), "model")
    model.to(example.device)
    was_training = model.training
    model.eval()  # eval: no dropout draw, no BatchNorm update, the RNG stream stays untouched
    with torch.no_grad():
        try:
            out = model(example[:2])
        except Exception as e:
            raise UserError(
                f"model {cfg.get('_target_')} fails on input of shape {list(example[:2].shape)}: "
                f"{type(e).__name__}: {e}"
            ) from e
    model.train(was_training)
    task = task or Classification()
    problem = task.output_problem(out, 2, num_classes)
    if problem:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(
            f"model {cfg.get('_target_')} outputs {shape} for a batch of 2, but task "
            f"{task.name} needs {num_classes} outputs per sample: {problem} (does its "
            f"constructor use num_classes?)"
        )
    if cfg.get("init_from"):
        from nnrecipe.models.init_from import init_from

        init_from(model, cfg.init_from)
    return model


def _without(cfg: DictConfig, keys) -> DictConfig:
    from omegaconf import OmegaConf

    if not any(k in cfg for k in keys):
        return cfg
    return OmegaConf.create({k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items()
                             if k not in keys})


def classifier_head(model: nn.Module) -> nn.Linear | None:
    """The final Linear layer: timm's get_classifier() where there is one, else the last Linear."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        if isinstance(head, nn.Linear):
            return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


@torch.no_grad()
def init_head_bias(model: nn.Module, train_labels: torch.Tensor, num_classes: int,
                   mode: str = "prior", task=None) -> bool:
    """ "Init well" (init.head_bias): `prior` sets the head's bias to the task's best constant
    output (task.constant_output: log class frequencies, the target mean, the log odds of each
    label), so the loss at init is the loss of that constant and the first steps are not spent
    learning it; `zero` sets it to zero (whatever the model's own init drew). False when the
    model has no recognisable head. `task`: nnrecipe.tasks (None: classification)."""
    if mode not in ("prior", "zero"):
        raise UserError(f"init.head_bias={mode}: use prior or zero")
    from nnrecipe.models.init_from import HEAD_LOADED

    if getattr(model, HEAD_LOADED, False):
        return True  # the head came from model.init_from: its bias is learned, keep it
    head = classifier_head(model)
    if head is None or head.bias is None or head.bias.numel() != num_classes:
        return False
    if mode == "zero":
        head.bias.zero_()
    else:
        constant = (task or Classification()).constant_output(train_labels, num_classes)
        head.bias.copy_(constant.to(head.bias))
    return True
