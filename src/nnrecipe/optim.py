"""Optimizer and learning-rate schedule builders."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from nnrecipe.errors import UserError, instantiate

log = logging.getLogger("nnrecipe")


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    if not cfg.get("lr", 0) > 0:
        raise UserError(f"optimizer.lr must be positive, got {cfg.get('lr')}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not cfg.get("decay_norm_and_bias", True) and cfg.get("weight_decay", 0):
        params = decay_groups(model)
    if "decay_norm_and_bias" in cfg:  # nnrecipe's key, not the optimizer class's
        cfg = OmegaConf.create({k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items()
                                if k != "decay_norm_and_bias"})
    return instantiate(cfg, "optimizer", params=params)


def decay_groups(model: nn.Module) -> list[dict]:
    """optimizer.decay_norm_and_bias=false: weight decay on weight matrices and kernels only.
    Biases and normalisation scales/shifts (every 1-d parameter) and what the model names in
    no_weight_decay() (timm: position embeddings, class tokens) get none: decaying them pulls
    the scales of normalised layers toward 0 without regularising what the layers compute."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            exempt = p.ndim <= 1 or name in skip or name.split(".")[0] in skip
            (no_decay if exempt else decay).append(p)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class Schedule:
    """Learning rate = base lr x warmup x shape x plateau factor, updated every optimizer step.

    Written by hand because torch's schedulers each own the lr: a per-step warmup cannot be
    stacked on ReduceLROnPlateau, and SequentialLR does not resume cleanly. This is ~40 lines
    and its whole state is three numbers.
    """

    def __init__(
        self,
        cfg: DictConfig,
        optimizer: torch.optim.Optimizer,
        steps_per_epoch: int,
        max_epochs: int,
    ):
        if cfg.name not in ("constant", "cosine", "step", "plateau"):
            raise UserError(f"unknown schedule.name={cfg.name!r}: constant|cosine|step|plateau")
        # plain Python values: reading a DictConfig on every step costs more than the step math
        self.cfg = SimpleNamespace(**OmegaConf.to_container(cfg, resolve=True))
        self.optimizer = optimizer
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = max(1, steps_per_epoch * max_epochs)
        self.warmup_steps = round(getattr(self.cfg, "warmup_epochs", 0) * steps_per_epoch)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.step_count, self.plateau_factor = 0, 1.0
        self.best, self.bad_epochs = math.inf, 0
        self._apply()

    def multiplier(self, step: int) -> float:
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        name = self.cfg.name
        if name == "cosine":
            t = min(
                1.0, max(0, step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
            )
            floor = getattr(self.cfg, "min_lr_ratio", 0.0)
            shape = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        elif name == "step":
            shape = self.cfg.gamma ** (step // (self.cfg.step_epochs * self.steps_per_epoch))
        else:
            shape = 1.0
        return warmup * shape * self.plateau_factor

    def step(self) -> None:
        """After each optimizer step."""
        self.step_count += 1
        self._apply()

    def epoch_end(self, val_loss: float) -> None:
        """Plateau: cut the lr by `factor` after `patience` epochs without improvement."""
        if self.cfg.name != "plateau":
            return
        if val_loss < self.best * (1 - self.cfg.threshold):
            self.best, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.cfg.patience:
                self.plateau_factor *= self.cfg.factor
                self.bad_epochs = 0
        self._apply()

    def _apply(self) -> None:
        m = self.multiplier(self.step_count)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * m

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        keys = ("step_count", "plateau_factor", "best", "bad_epochs")
        return {**{k: getattr(self, k) for k in keys}, "shape": self._shape()}

    def load_state_dict(self, state: dict) -> None:
        """Continue where the saved schedule was, on the shape it had: a cosine shaped for the
        checkpoint's trainer.max_epochs keeps that shape when the resumed run's differs (warned,
        with what it means), so resuming never jumps the lr back up."""
        for key in ("step_count", "plateau_factor", "best", "bad_epochs"):
            setattr(self, key, state[key])
        saved = state.get("shape")  # None: a checkpoint written before shapes were saved
        if saved and saved != self._shape():
            if saved["name"] == self.cfg.name == "cosine":
                log.warning("%s", self._reshaped_warning(saved))
            self.steps_per_epoch = saved["steps_per_epoch"]
            self.total_steps = saved["total_steps"]
            self.warmup_steps = saved["warmup_steps"]
        self._apply()

    def _shape(self) -> dict:
        keys = ("steps_per_epoch", "total_steps", "warmup_steps")
        return {"name": self.cfg.name, **{k: getattr(self, k) for k in keys}}

    def _reshaped_warning(self, saved: dict) -> str:
        """The exact consequence of keeping a cosine shaped for another number of epochs."""
        was = saved["total_steps"] / saved["steps_per_epoch"]
        now = self.total_steps / self.steps_per_epoch
        floor = getattr(self.cfg, "min_lr_ratio", 0.0)
        head = (f"schedule cosine was shaped for {was:g} epochs (the checkpoint's "
                f"trainer.max_epochs) and continues on that shape, not on "
                f"trainer.max_epochs={now:g}")
        if now > was:
            lr = floor * self.base_lrs[0]
            idle = " (lr 0: those epochs change nothing)" if lr == 0 else ""
            return (f"{head}: the lr stays at min_lr ({floor:g} x lr = {lr:g}) from epoch "
                    f"{was + 1:g} to {now:g}{idle}. To train longer on a fresh cosine, start a "
                    f"new run from these weights instead of resuming")
        t = (now * saved["steps_per_epoch"] - saved["warmup_steps"]) / max(
            1, saved["total_steps"] - saved["warmup_steps"])
        left = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, t))))
        return (f"{head}: training stops at epoch {now:g} with the lr at {left:.3g} x lr, "
                f"before the decay ends")
