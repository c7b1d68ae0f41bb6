"""The training loop: fit() and evaluate(), plain PyTorch, read top to bottom.

The same loop runs in one process or in each of N (torchrun, SLURM): what differs lives in
nnrecipe.distributed, called here through a few named steps (wrap the model, this rank's share
of each batch, sums over ranks, decisions every rank takes together).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from nnrecipe import distributed, runtime
from nnrecipe.checkpoint import Checkpointer
from nnrecipe.data import DataBundle, TensorSplit, iterate_batches, num_batches
from nnrecipe.data.batches import global_batch_sizes
from nnrecipe.errors import UserError
from nnrecipe.models.init_from import set_trunk_frozen
from nnrecipe.optim import Schedule
from nnrecipe.tasks import Classification, Task, add_stats, reduce_stats
from nnrecipe.tracking import Tracker

log = logging.getLogger("nnrecipe")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
EPOCH_LINE = "epoch_line"  # a log record's marker: shown on the console only when no bar is


class Diverged(UserError):
    """The training loss (or the weights) became NaN or infinite."""


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
    step_in_epoch: int = 0      # steps of the unfinished epoch (a preempted run stops mid-epoch)
    epoch_loss_sum: float = 0.0  # train/loss summed over those steps (the epoch's log line)


def autocast(device: torch.device, precision: str):
    if precision not in DTYPES:
        raise UserError(f"trainer.precision={precision!r}: use fp32, bf16 or fp16")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


@torch.no_grad()
def evaluate(model: nn.Module, split, batch_size: int, precision: str = "fp32",
             num_workers: int = 0, task: Task | None = None,
             shard: bool = True) -> dict[str, float]:
    """The task's metrics (val/loss, val/acc ... ) of `model` over the whole split, in eval mode:
    per-batch sums (task.batch_stats) added up, then turned into metrics.

    In a distributed run (`shard`) each rank evaluates its contiguous share of the split and
    the sums are added over ranks: every sample counts exactly once. Call it on every rank, or
    with shard=False on one.
    """
    task = task or Classification()
    device = next(model.parameters()).device
    rank, world = (distributed.rank(), distributed.world()) if shard else (0, 1)
    was_training = model.training
    model.eval()
    sums = None  # summed stats, then summed over ranks
    for x, y in iterate_batches(split, batch_size, device=device, num_workers=num_workers,
                                rank=rank, world=world):
        with autocast(device, precision):
            outputs = model(x)
        sums = add_stats(sums, task.batch_stats(outputs, y))
    model.train(was_training)
    if world > 1:
        sums = reduce_stats(sums, distributed.all_reduce_sum)
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
    ema=None,
    distiller=None,
    inside=None,
    freeze_epochs: int = 0,
    inside_every: int = 0,
) -> FitState:
    """Train for trainer.max_epochs, evaluating on the whole validation split after each epoch.

    Checkpoints (see Checkpointer): `last.pt` every trainer.checkpoint_every_s seconds and at
    the end, `best.pt` the epoch with the best val/loss. Only rank 0 writes them (pass
    checkpoint_dir=None on the others).
    `dynamics`: a checks.PredictionDynamics (or None) that records predictions each epoch.
    On SIGTERM/SIGUSR1 the step that runs finishes, last.pt is written and
    runtime.Preempted is raised.
    `task`: loss and metrics (nnrecipe.tasks; None: classification).
    Recipe steps 4/6 (nnrecipe.squeeze; None or 0: off, at no cost): `ema` averages the weights
    after each optimizer step and is evaluated each epoch (val/<metric>_ema; it picks best.pt
    when trainer.ema.evaluate_with=ema), `distiller` replaces the task's loss by its mix with
    a teacher's, `inside` records activation statistics every `inside_every` epochs, and the
    trunk stays frozen for the first `freeze_epochs` epochs.
    """
    task = task or Classification()
    device = next(model.parameters()).device
    rank, world = distributed.rank(), distributed.world()
    net = distributed.wrap_model(model, trainer.get("sync_batchnorm"), device)
    net = torch.compile(net) if trainer.compile else net
    scaler = torch.amp.GradScaler(device.type, enabled=trainer.precision == "fp16")
    shuffle = torch.Generator().manual_seed(seed)  # batch order: its own stream, saved for resume
    state = FitState()
    if resume is not None:
        state = _restore(resume, model, optimizer, schedule, scaler, shuffle)
        if ema is not None and resume.get("ema"):  # the average continues too
            ema.load_state_dict(resume["ema"])
    follow_ema = ema is not None and trainer.ema.get("evaluate_with", "ema") == "ema"
    # plain locals for the hot loop: each DictConfig lookup costs microseconds
    precision, clip_norm = trainer.precision, trainer.grad_clip_norm
    log_every = max(1, trainer.get("log_every_n_steps", 25))
    patience = trainer.early_stopping.patience
    steps_per_epoch = num_batches(data.train, data.batch_size)
    shares = _loss_shares(data.train, data.batch_size, world)
    saver = Checkpointer(checkpoint_dir, trainer.checkpoint_every_s) if checkpoint_dir else None
    epoch_shuffle, rngs = shuffle.get_state(), None  # what save() stores: set as training goes
    save = lambda: _checkpoint(state, model, optimizer, schedule, scaler, epoch_shuffle,  # noqa: E731
                               config, rngs, tracker.run_id, ema)
    bar = tqdm(total=steps_per_epoch * trainer.max_epochs, initial=state.step, unit="step",
               disable=None if trainer.progress and distributed.is_main() else True,
               dynamic_ncols=True, leave=False)
    signals = runtime.StopSignals()

    with signals, _epoch_lines_off_the_console(shown=not bar.disable):
        for epoch in range(state.epoch, trainer.max_epochs):
            bar.set_description(f"epoch {epoch + 1}/{trainer.max_epochs}")
            started = time.monotonic()
            epoch_shuffle = shuffle.get_state()  # this epoch's order: a preempted run redraws it
            model.train()
            if freeze_epochs:  # fine-tuning: the head alone for the first freeze_epochs
                set_trunk_frozen(model, epoch < freeze_epochs)
            pending = []  # (step, lr, loss tensor): logged in blocks, one device sync per block
            for x, y in iterate_batches(data.train, data.batch_size, shuffle=True,
                                        generator=shuffle, device=device,
                                        num_workers=data.num_workers, rank=rank, world=world,
                                        skip=state.step_in_epoch):
                if augment is not None:
                    x, y = augment(x, y)
                with autocast(device, precision):
                    out = net(x)  # a distiller's teacher sees the augmented x the student sees
                    loss = distiller.loss(out, y, x) if distiller else task.loss(out, y)
                if shares:  # ranks: DDP's mean of their losses is the global batch's mean
                    loss = loss * shares[state.step_in_epoch]
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if clip_norm:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
                stepped = _optimizer_step(optimizer, scaler)
                state.step += 1
                state.step_in_epoch += 1
                pending.append((state.step, schedule.lr, loss.detach()))
                if stepped:  # fp16: a step the scaler skipped leaves the schedule where it was
                    schedule.step()
                    if ema is not None:  # the unwrapped model: the same keys as model's
                        ema.update(model, state.step)
                # a stop signal (SIGTERM, SIGUSR1): ranks look together, once per block
                if ((world == 1 or len(pending) == log_every)
                        and distributed.agree(signals.received is not None)):
                    state.epoch_loss_sum += _log_train_losses(pending, tracker, epoch,
                                                              optimizer, distiller)
                    rngs = distributed.gather_objects(runtime.rng_state())
                    _preempted(saver, save, model, state, signals)  # last.pt, then raises
                if len(pending) == log_every:
                    state.epoch_loss_sum += _log_train_losses(pending, tracker, epoch,
                                                              optimizer, distiller)
                bar.update()
            state.epoch_loss_sum += _log_train_losses(pending, tracker, epoch,
                                                      optimizer, distiller)
            train_loss = state.epoch_loss_sum / max(1, state.step_in_epoch)
            state.step_in_epoch, state.epoch_loss_sum = 0, 0.0
            epoch_shuffle = shuffle.get_state()  # the next epoch's order

            distributed.same_buffers(model)  # every rank evaluates the model rank 0 saves
            raw = evaluate(model, data.val, trainer.eval_batch_size, trainer.precision,
                           data.num_workers, task)
            val_ema = None
            if ema is not None:  # the average of the weights, on the same val split
                distributed.same_buffers(ema.module)
                val_ema = evaluate(ema.module, data.val, trainer.eval_batch_size,
                                   trainer.precision, data.num_workers, task)
            val = val_ema if follow_ema else raw  # what picks best.pt, stops early, plateaus
            schedule.epoch_end(val["loss"])
            state.epoch = epoch + 1
            if dynamics is not None:  # eval mode, no grad: draws no random numbers
                dynamics.record(model, state.epoch)
            if inside is not None and inside_every and state.epoch % inside_every == 0:
                inside.record(model, state.epoch, state.step)  # eval mode, no grad
            # min_delta only decides what counts as progress for early stopping; best.pt is
            # always the lowest val/loss (the EMA's with trainer.ema.evaluate_with=ema)
            progress = val["loss"] < state.best_val_loss - trainer.early_stopping.min_delta
            state.bad_epochs = 0 if progress else state.bad_epochs + 1
            improved = val["loss"] < state.best_val_loss
            if improved:
                state.best_val_loss, state.best_val = val["loss"], dict(val)
                state.best_epoch = state.epoch
            shown = {**raw, **{f"{m}_ema": v for m, v in (val_ema or {}).items()}}
            metrics = {"epoch": state.epoch, **{f"val/{m}": v for m, v in shown.items()}}
            state.history.append(metrics)
            tracker.log(metrics, step=state.step)
            bar.set_postfix({f"val/{m}": f"{v:.4f}" for m, v in shown.items()})
            _log_epoch_line(state, trainer.max_epochs, train_loss, shown,
                            time.monotonic() - started)

            # patience P: stop after P epochs without progress (0 acts as 1: an improving epoch
            # never stops the run); all ranks take the decision together
            stop = distributed.agree(patience is not None and state.bad_epochs >= max(1, patience))
            _check_weights_finite(model, state.epoch)  # never write last.pt with NaN weights
            rngs = distributed.gather_objects(runtime.rng_state()) if world > 1 else None
            if saver is not None:
                saver.epoch_end(save, improved, final=stop or state.epoch == trainer.max_epochs)
            if stop:
                log.info("early stopping: val/loss has not improved for %d epochs",
                         state.bad_epochs)
                break
    bar.close()
    return state


def _optimizer_step(optimizer, scaler) -> bool:
    """scaler.step + update; False when fp16's scaler skipped the step (inf/NaN gradients).
    fp16 only: reading the scale syncs with the device once a step (bf16 and fp32 never do)."""
    if not scaler.is_enabled():
        optimizer.step()
        return True
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= before  # the scale drops exactly when the step was skipped


def _loss_shares(split, batch_size: int, world: int) -> list[float] | None:
    """Per step, the factor that makes DDP's mean over ranks of each rank's mean loss equal the
    mean loss over the global batch: 1.0 when the ranks' shares are equal, other values only
    for a last batch that does not split evenly. None in one process, or for files (a
    DistributedSampler gives every rank the same number of samples)."""
    if world == 1 or not isinstance(split, TensorSplit):
        return None
    shares = []
    for size in global_batch_sizes(len(split), batch_size):
        if size < world:
            break  # dropped by iterate_batches
        mine = [len(c) for c in torch.tensor_split(torch.arange(size), world)]
        shares.append([n * world / size for n in mine][distributed.rank()])
    return shares


def _preempted(saver, save, model, state: FitState, signals) -> None:
    """A stop signal reached (some rank of) the run: write last.pt now, then stop."""
    _check_weights_finite(model, state.epoch)
    if saver is not None:
        saver.epoch_end(save, improved=False, final=True)
        log.warning("stop signal: last.pt written at step %d (epoch %d, step %d of it)",
                    state.step, state.epoch + 1, state.step_in_epoch)
    distributed.barrier()  # no rank leaves before rank 0 has written last.pt
    signals.chain()  # a requeue handler installed before ours (submitit's)
    raise runtime.Preempted(signals.received or 15)


def _check_weights_finite(model: nn.Module, epoch: int) -> None:
    total = sum(p.detach().float().abs().sum() for p in model.parameters())
    if not math.isfinite(float(total)):
        raise Diverged(
            f"the weights became NaN or infinite in epoch {epoch + 1} (though the loss was "
            f"finite); last.pt was not overwritten. Lower optimizer.lr or set "
            f"trainer.grad_clip_norm=1.0")


def _log_train_losses(pending, tracker: Tracker, epoch: int, optimizer,
                      distiller=None) -> float:
    """Log the block's train losses (means over the global batch: summed over ranks); return
    their sum. A NaN on any rank is in every rank's sum: every rank stops, together."""
    if not pending:
        return 0.0
    losses = torch.stack([loss for _, _, loss in pending]).float()
    if distributed.launched():
        losses = distributed.all_reduce_sum(losses) / distributed.world()
    losses = losses.tolist()
    for (step, lr, _), loss in zip(pending, losses):
        if not math.isfinite(loss):
            error = Diverged(
                f"train/loss became {loss} at step {step} (epoch {epoch + 1}). Lower the "
                f"learning rate (optimizer.lr={optimizer.defaults.get('lr')}), set "
                f"trainer.grad_clip_norm=1.0, or run the preflight checks to find the cause.")
            error.settled = distributed.launched()  # every rank raises it: rank 0 says it
            raise error
        tracker.log({"train/loss": loss, "train/lr": lr}, step=step)
    if distiller is not None and distiller.last_parts:  # the block's last step: task vs teacher
        tracker.log({k: v.item() for k, v in distiller.last_parts.items()}, step=pending[-1][0])
    pending.clear()
    return sum(losses)


def _log_epoch_line(state: FitState, max_epochs: int, train_loss: float, val: dict,
                    seconds: float) -> None:
    """One line per epoch in train.log (the learning curve), and on the console when no
    progress bar shows it (a pipe, `tee`, a SLURM log)."""
    metrics = "  ".join(f"val/{m} {v:.4f}" for m, v in val.items())
    log.info("epoch %d/%d  train/loss %.4f  %s  %.2fs", state.epoch, max_epochs, train_loss,
             metrics, seconds, extra={EPOCH_LINE: True})


@contextlib.contextmanager
def _epoch_lines_off_the_console(shown: bool):
    """While the bar is shown, the epoch lines go to train.log only (the bar says it)."""
    if not shown:
        yield
        return
    drop = lambda record: not getattr(record, EPOCH_LINE, False)  # noqa: E731
    consoles = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    for h in consoles:
        h.addFilter(drop)
    try:
        yield
    finally:
        for h in consoles:
            h.removeFilter(drop)


def _checkpoint(state: FitState, model, optimizer, schedule, scaler, shuffle_state, config,
                rngs, wandb_id, ema=None) -> dict:
    rngs = rngs or [runtime.rng_state()]  # every rank's RNG state (one in a single process)
    return {
        "model": model.state_dict(),
        **({"ema": ema.state_dict()} if ema is not None else {}),  # nnrecipe.squeeze.runs
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "scaler": scaler.state_dict(),
        "fit_state": {k: v for k, v in vars(state).items()},
        "rng": rngs[0],
        "rng_ranks": rngs,
        "shuffle_rng": shuffle_state,  # draws the order of the epoch that step_in_epoch is in
        "config": config,
        "wandb_id": wandb_id,  # a resumed run continues this W&B run
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
    runtime.set_rng_state(_rank_rng(ckpt))
    shuffle.set_state(ckpt["shuffle_rng"])
    state = dict(ckpt["fit_state"])
    if "best_val_acc" in state:  # written before the task group: val metrics were loss and acc
        state["best_val"] = {"loss": state["best_val_loss"], "acc": state.pop("best_val_acc")}
    return FitState(**state)


def _rank_rng(ckpt: dict) -> dict:
    """This rank's RNG state from the checkpoint; written by another number of ranks, rank r
    takes the state of rank r mod N (warned: augmentation and dropout differ from a run that
    was never stopped)."""
    states = ckpt.get("rng_ranks") or [ckpt["rng"]]
    if len(states) != distributed.world() and distributed.is_main():
        log.warning("the checkpoint was written by %d rank(s) and resumes on %d: the same "
                    "weights, optimizer and batch order, but augmentation and dropout draw "
                    "other random numbers than a run that was never stopped",
                    len(states), distributed.world())
    return states[distributed.rank() % len(states)]
