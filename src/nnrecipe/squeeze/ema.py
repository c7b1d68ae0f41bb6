"""EMA of the weights (recipe step 4/6): an exponential moving average of the parameters and
buffers, evaluated alongside the raw weights. timm's ModelEmaV3 with its warmup (the decay grows
as 1 - (1 + step)^(-2/3) up to trainer.ema.decay), so the average does not drag the random init
into the first epochs' weights.

How src/nnrecipe/loop.py and src/train.py use it (README, "EMA of the weights"):
    ema = build_ema(cfg.trainer, model)                  # None when trainer.ema.decay is null
    ... after scaler.step(optimizer) / state.step += 1:  ema.update(model, state.step)
    ... after evaluating `model` on val:                 evaluate(ema.module, ...) -> val/loss_ema
    checkpoint["ema"] = ema.state_dict(); on resume ema.load_state_dict(ckpt["ema"])
"""

from __future__ import annotations

from torch import nn

from nnrecipe.errors import UserError

CHOICES = ("ema", "raw")


class Ema:
    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        from timm.utils import ModelEmaV3

        if not 0 < decay < 1:
            raise UserError(f"trainer.ema.decay={decay}: use a value in (0, 1), e.g. 0.999 "
                            f"(null: off)")
        self.ema = ModelEmaV3(model, decay=decay, use_warmup=warmup)

    @property
    def module(self) -> nn.Module:
        """The averaged model (eval mode): evaluate it like the raw one."""
        return self.ema.module

    def update(self, model: nn.Module, step: int) -> None:
        """After each optimizer step; `step`: optimizer steps taken so far (drives the warmup)."""
        self.ema.update(model, step=step)

    def state_dict(self) -> dict:
        return self.ema.state_dict()  # keys `module.<name>`: nnrecipe.squeeze.runs reads them

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state)


def build_ema(trainer_cfg, model: nn.Module) -> Ema | None:
    """trainer.ema.decay (null: no EMA), trainer.ema.warmup, trainer.ema.evaluate_with."""
    cfg = trainer_cfg.get("ema") or {}
    if cfg.get("evaluate_with", "ema") not in CHOICES:
        raise UserError(f"trainer.ema.evaluate_with={cfg.get('evaluate_with')}: use ema or raw")
    if cfg.get("decay") is None:
        return None
    return Ema(model, float(cfg["decay"]), bool(cfg.get("warmup", True)))


def tested_weights(trainer_cfg, model: nn.Module, ema: Ema | None) -> nn.Module:
    """The weights whose val/loss picks best.pt and that the test scores."""
    if ema is not None and (trainer_cfg.get("ema") or {}).get("evaluate_with", "ema") == "ema":
        return ema.module
    return model
