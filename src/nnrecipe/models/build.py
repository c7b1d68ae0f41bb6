"""build_model: instantiate the configured model and prove its output fits the data."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from nnrecipe.errors import UserError, instantiate

# Keys of conf/model/*.yaml that nnrecipe acts on, not arguments of the model's class.
OWN_KEYS = ("init_from", "freeze_epochs")


def build_model(cfg: DictConfig, example: torch.Tensor, num_classes: int) -> nn.Module:
    """Build from `_target_` and check, on a 2-sample example batch, the shape of its output;
    then load model.init_from's weights, if given."""
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
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(
            f"model {cfg.get('_target_')} outputs {shape} for a batch of 2, but the data has "
            f"{num_classes} classes: it must return logits of shape [batch, {num_classes}] "
            f"(does its constructor use num_classes?)"
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


def class_prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class frequencies, smoothed so that a class missing from the labels has a finite log."""
    counts = torch.bincount(labels.cpu().long(), minlength=num_classes).float()
    return (counts + 1e-3) / (counts.sum() + 1e-3 * num_classes)


@torch.no_grad()
def init_head_bias(model: nn.Module, train_labels: torch.Tensor, num_classes: int,
                   mode: str = "prior") -> bool:
    """ "Init well" (init.head_bias): `prior` sets the head's bias to log class frequencies, so the
    loss at init is the prior's entropy and the first steps are not spent learning the class
    balance; `zero` sets it to zero (every class equally likely at init, whatever the model's own
    init drew). False when the model has no recognisable head."""
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
        head.bias.copy_(class_prior(train_labels, num_classes).log().to(head.bias))
    return True
