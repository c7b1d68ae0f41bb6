"""The training loop: fit() and evaluate(), plain PyTorch, read top to bottom."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from nnrecipe import runtime
from nnrecipe.checkpoint import Checkpointer
from nnrecipe.data import DataBundle, iterate_batches, num_batches
from nnrecipe.errors import UserError
from nnrecipe.optim import Schedule
from nnrecipe.tasks import Classification, Task, add_stats
from nnrecipe.tracking import Tracker

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Diverged(UserError):
    """The training loss became NaN or infinite."""


@dataclass
class FitState:
    """Everything fit() needs to continue exactly where it stopped."""

    epoch: int = 0              # epochs completed
    step: int = 0               # optimizer steps taken
    best_val_loss: float = math.inf
    best_val: dict = field(default_factory=dict)  # every val metric of the best epoch
    best_epoch: int = -1
    bad_epochs: int = 0         # epochs since the last improvement (early stopping)
    history: list[dict] = field(default_factory=list)  # one dict of metrics per epoch


def autocast(device: torch.device, precision: str):
    if precision not in DTYPES:
        raise UserError(f"trainer.precision={precision!r}: use fp32, bf16 or fp16")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


@torch.no_grad()
def evaluate(model: nn.Module, split, batch_size: int, precision: str = "fp32",
             num_workers: int = 0, task: Task | None = None) -> dict[str, float]:
    """The task's metrics (val/loss, val/acc ... ) of `model` over the whole split, in eval mode:
    per-batch sums (task.batch_stats) added up, then turned into metrics."""
    task = task or Classification()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums = None  # summed stats: what ranks would all-reduce
    for x, y in iterate_batches(split, batch_size, device=device, num_workers=num_workers):
        with autocast(device, precision):
            outputs = model(x)
        sums = add_stats(sums, task.batch_stats(outputs, y))
    model.train(was_training)
    return task.metrics(sums)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    data: DataBundle,
    trainer: DictConfig,
    tracker: Tracker,
    checkpoint_dir: Path | None,
    seed: int = 0,
    augment=None,
    resume: dict | None = None,
    config: dict | None = None,
    dynamics=None,
    task: Task | None = None,
) -> FitState:
    """Train for trainer.max_epochs, evaluating on the whole validation split after each epoch.

    Checkpoints (see Checkpointer): `last.pt` every trainer.checkpoint_every_s seconds and at
    the end, `best.pt` the epoch with the best val/loss.
    `dynamics`: a checks.PredictionDynamics (or None) that records predictions each epoch.
    `task`: loss and metrics (nnrecipe.tasks; None: classification).
    """
    task = task or Classification()
    device = next(model.parameters()).device
    net = torch.compile(model) if trainer.compile else model
    scaler = torch.amp.GradScaler(device.type, enabled=trainer.precision == "fp16")
    shuffle = torch.Generator().manual_seed(seed)  # batch order: its own stream, saved for resume
    state = FitState()
    if resume is not None:
        state = _restore(resume, model, optimizer, schedule, scaler, shuffle)
    # plain locals for the hot loop: each DictConfig lookup costs microseconds
    precision, clip_norm = trainer.precision, trainer.grad_clip_norm
    log_every = max(1, trainer.get("log_every_n_steps", 25))
    patience = trainer.early_stopping.patience
    steps_per_epoch = num_batches(data.train, data.batch_size)
    saver = Checkpointer(checkpoint_dir, trainer.checkpoint_every_s) if checkpoint_dir else None
    bar = tqdm(total=steps_per_epoch * trainer.max_epochs, initial=state.step, unit="step",
               disable=None if trainer.progress else True, dynamic_ncols=True, leave=False)

    for epoch in range(state.epoch, trainer.max_epochs):
        bar.set_description(f"epoch {epoch + 1}/{trainer.max_epochs}")
        model.train()
        pending = []  # (step, lr, loss tensor): logged in blocks, one device sync per block
        for x, y in iterate_batches(data.train, data.batch_size, shuffle=True, generator=shuffle,
                                    device=device, num_workers=data.num_workers):
            if augment is not None:
                x, y = augment(x, y)
            with autocast(device, precision):
                loss = task.loss(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if clip_norm:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            scaler.step(optimizer)
            scaler.update()
            state.step += 1
            pending.append((state.step, schedule.lr, loss.detach()))
            schedule.step()
            if len(pending) == log_every:
                _log_train_losses(pending, tracker, epoch, optimizer)
                pending = []
            bar.update()
        _log_train_losses(pending, tracker, epoch, optimizer)

        val = evaluate(model, data.val, trainer.eval_batch_size, trainer.precision,
                       data.num_workers, task)
        schedule.epoch_end(val["loss"])
        state.epoch = epoch + 1
        if dynamics is not None:  # eval mode, no grad: draws no random numbers
            dynamics.record(model, state.epoch)
        # min_delta only decides what counts as progress for early stopping; best.pt is
        # always the lowest val/loss
        progress = val["loss"] < state.best_val_loss - trainer.early_stopping.min_delta
        state.bad_epochs = 0 if progress else state.bad_epochs + 1
        improved = val["loss"] < state.best_val_loss
        if improved:
            state.best_val_loss, state.best_val = val["loss"], dict(val)
            state.best_epoch = state.epoch
        metrics = {"epoch": state.epoch, **{f"val/{m}": v for m, v in val.items()}}
        state.history.append(metrics)
        tracker.log(metrics, step=state.step)
        bar.set_postfix({f"val/{m}": f"{v:.4f}" for m, v in val.items()})

        stop = patience is not None and state.bad_epochs >= patience
        if saver is not None:
            saver.epoch_end(
                lambda: _checkpoint(state, model, optimizer, schedule, scaler, shuffle, config),
                improved, final=stop or state.epoch == trainer.max_epochs)
        if stop:
            tqdm.write(f"early stopping: val/loss has not improved for {patience} epochs")
            break
    bar.close()
    return state


def _log_train_losses(pending, tracker: Tracker, epoch: int, optimizer) -> None:
    if not pending:
        return
    losses = torch.stack([loss for _, _, loss in pending]).float().tolist()
    for (step, lr, _), loss in zip(pending, losses):
        if not math.isfinite(loss):
            raise Diverged(
                f"train/loss became {loss} at step {step} (epoch {epoch + 1}). Lower the "
                f"learning rate (optimizer.lr={optimizer.defaults.get('lr')}), set "
                f"trainer.grad_clip_norm=1.0, or run the preflight checks to find the cause."
            )
        tracker.log({"train/loss": loss, "train/lr": lr}, step=step)


def _checkpoint(state: FitState, model, optimizer, schedule, scaler, shuffle, config) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "scaler": scaler.state_dict(),
        "fit_state": {k: v for k, v in vars(state).items()},
        "rng": runtime.rng_state(),
        "shuffle_rng": shuffle.get_state(),
        "config": config,
    }


def _restore(ckpt: dict, model, optimizer, schedule, scaler, shuffle) -> FitState:
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(
            f"the checkpoint does not fit this model/optimizer ({e}). Resume with the same "
            f"model and optimizer config as the run that wrote it."
        ) from e
    schedule.load_state_dict(ckpt["schedule"])
    scaler.load_state_dict(ckpt["scaler"])
    runtime.set_rng_state(ckpt["rng"])
    shuffle.set_state(ckpt["shuffle_rng"])
    state = dict(ckpt["fit_state"])
    if "best_val_acc" in state:  # written before the task group: val metrics were loss and acc
        state["best_val"] = {"loss": state["best_val_loss"], "acc": state.pop("best_val_acc")}
    return FitState(**state)
