"""nnrecipe's entry point: compose -> build -> preflight -> fit -> test -> objective.

    python src/train.py                                  # the default job (digits, convnet)
    python src/train.py model=mlp optimizer=sgd optimizer.lr=0.1
    python src/train.py -m hparams_search=random         # a random-search sweep
    torchrun --standalone --nproc_per_node=2 src/train.py  # one run on 2 processes (DDP)

Returns the objective (`objective`: a val metric of the task, e.g. val/loss or val/acc, at the
epoch with the lowest val/loss) that Hydra's sweepers optimise; a sweep's trial also leaves
metrics.json for scripts/compare_runs.py.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

import nnrecipe
from nnrecipe import distributed, runtime
from nnrecipe.augment import build_augmentation
from nnrecipe.checkpoint import (
    check_model_fits,
    checkpoint_file,
    config_changes,
    copy_checkpoint,
    load_checkpoint,
    resume_source,
)
from nnrecipe.checks import prediction_dynamics, run_preflight, save_dynamics
from nnrecipe.config import validate
from nnrecipe.data import build_data, iterate_batches, num_batches
from nnrecipe.errors import UserError, report_error
from nnrecipe.loop import Diverged, evaluate, fit
from nnrecipe.models import build_model, init_head_bias
from nnrecipe.optim import Schedule, build_optimizer
from nnrecipe.squeeze import wilson_interval
from nnrecipe.squeeze.distill import build_distiller
from nnrecipe.squeeze.ema import build_ema, tested_weights
from nnrecipe.squeeze.inside import Inside
from nnrecipe.sweeps import (
    SWEEP_LINE,
    compact_console,
    objective_direction,
    objective_value,
    write_metrics,
)
from nnrecipe.tasks import build_task, prepare_targets
from nnrecipe.tracking import run_identity, start_tracking

log = logging.getLogger("nnrecipe")


def train(cfg: DictConfig, run_dir: Path, identity: dict | None = None) -> float | None:
    """Train one run; return its objective (cfg.objective of the best epoch) for a sweeper
    (None with checks.only: the preflight ran, nothing trained).

    Under torchrun or a multi-task SLURM job every rank runs this; rank 0 alone writes the run
    folder and the W&B run, and every decision is taken by all ranks together."""
    validate(cfg)  # wrong types and ranges: one message naming the key, before any work
    distributed.init()
    run_dir = Path(distributed.broadcast_object(str(run_dir)))  # rank 0's folder is the run's
    runtime.seed_everything(cfg.seed)  # the same initial weights on every rank
    runtime.set_threads(cfg.trainer.num_threads, sharing=distributed.local_world())
    task = build_task(cfg.task)  # loss, metrics, init expectations (conf/task/)
    objective = cfg.get("objective", "val/loss")
    objective_direction(objective, task)  # a bad objective fails before any work
    device = runtime.pick_device(cfg.trainer.device, distributed.local_rank())
    runtime.set_tf32(cfg.trainer.tf32, device)
    # rank 0 decides (resume=auto looks for last.pt in its folder); the run folder and the
    # checkpoint it names must be on a file system every node sees (as on any SLURM cluster)
    resume_path = distributed.broadcast_object(resume_source(cfg.trainer.resume, run_dir))
    resume = distributed.together(load_checkpoint, resume_path) if resume_path else None

    # The W&B run starts first, so that a run failing anywhere below is a failed W&B run.
    config = {**OmegaConf.to_container(cfg, resolve=True), "world_size": distributed.world()}
    tracker = start_tracking(cfg.logger, run_dir, config, **(identity or {"name": run_dir.name}),
                             run_id=(resume or {}).get("wandb_id"))
    data = None  # metrics.json names the test split (split_hash) once there is one
    try:
        # Build: one object per config group; any rank's error stops every rank.
        data, model, optimizer, schedule, augment, ema, distiller = distributed.together(
            _build, cfg, task, device, resume, resume_path)
        config = {**OmegaConf.to_container(cfg, resolve=True), "world_size": distributed.world(),
                  "split_hash": data.split_hash}
        tracker.update_config(config)  # with the values found while loading the data
        checkpoints = run_dir / "checkpoints"
        if resume is not None and distributed.is_main():
            done = resume.get("fit_state", {})
            log.info("resuming from %s: %d epochs and %d steps done (trainer.resume=%s)",
                     resume_path, done.get("epoch", 0), done.get("step", 0), cfg.trainer.resume)
            _carry_best_checkpoint(resume_path, checkpoints)
            if changed := config_changes(resume.get("config"), config):
                log.warning("resuming with a config that differs from the checkpoint's in %s: "
                            "the run will not continue exactly", ", ".join(changed))
        if distributed.launched():  # augmentation and dropout: another stream on each rank
            runtime.seed_everything(cfg.seed + distributed.rank())

        # Recipe step 2: sanity checks on copies, on rank 0 while the others wait; a FAIL raises
        # PreflightFailed (a UserError) on every rank.
        checks = distributed.on_main(_preflight, cfg, task, model, data, run_dir, tracker,
                                     augment)
        if cfg.checks.only:  # no objective: a sweeper records such a trial as failed
            distributed.main_only(write_metrics)(run_dir, "checked", checks=checks,
                                                 split_hash=data.split_hash)
            tracker.finish()
            return None
        dynamics = (prediction_dynamics(model, data, cfg.checks, untrained=resume is None)
                    if distributed.is_main() else None)
        inside = (_inside(cfg, model, data, device, run_dir, tracker)
                  if distributed.is_main() else None)
        state = fit(model, optimizer, schedule, data, cfg.trainer, tracker,
                    checkpoints if distributed.is_main() else None, seed=cfg.seed,
                    augment=augment, resume=resume, config=config, dynamics=dynamics, task=task,
                    ema=ema, distiller=distiller, inside=inside,
                    freeze_epochs=cfg.model.get("freeze_epochs", 0),
                    inside_every=cfg.inside.every_n_epochs)
        if distributed.is_main():
            save_dynamics(dynamics, run_dir, tracker, state.step)
        if inside is not None:  # filters.png and activations.png
            inside.finish(model, state.epoch, state.step)
        if state.best_epoch < 0:  # every epoch's val/loss was NaN or infinite
            raise Diverged("no epoch reached a finite val/loss: lower optimizer.lr or set "
                           "trainer.grad_clip_norm=1.0, or run the preflight checks")

        # Test once, with the weights that had the best val/loss (rank 0's best.pt, sent to all):
        # the EMA's when trainer.ema.evaluate_with=ema.
        if best := distributed.on_main(_best_weights, checkpoints / "best.pt"):
            model.load_state_dict(best["model"])
            if ema is not None and "ema" in best:
                ema.load_state_dict(best["ema"])
        test = evaluate(tested_weights(cfg.trainer, model, ema), data.test,
                        cfg.trainer.eval_batch_size, cfg.trainer.precision, data.num_workers,
                        task)
        test = {f"test/{m}": v for m, v in test.items()}
        tracker.log(test, step=state.step)
        summary = {"best/val_loss": state.best_val_loss, "best/epoch": state.best_epoch,
                   # "at_best_loss": the epoch chosen by val/loss, not each metric's own best
                   **{f"best/val_{m}_at_best_loss": v for m, v in state.best_val.items()
                      if m != "loss"}, **test}
        if "test/acc" in test:  # the test accuracy's 95% Wilson interval
            n = len(data.test)
            low, high = wilson_interval(round(test["test/acc"] * n), n)
            summary.update({"test/acc_ci_low": low, "test/acc_ci_high": high})
        tracker.summary(summary)
        value = objective_value(objective, state.best_val, task)
    except runtime.Preempted:
        distributed.main_only(write_metrics)(run_dir, "preempted")
        tracker.finish(preempted=True)
        raise
    except BaseException as e:
        distributed.main_only(write_metrics)(run_dir, "failed", error=f"{type(e).__name__}: {e}",
                                             **_split_hash(data))
        tracker.finish(failed=True)
        raise
    distributed.main_only(write_metrics)(run_dir, "finished", objective=value, summary=summary,
                                         history=state.history, split_hash=data.split_hash)
    tracker.finish()
    primary = task.primary_metric()
    val_line = "  ".join(f"val/{m} {v:.4f}" for m, v in state.best_val.items())
    if ema is not None and tested_weights(cfg.trainer, model, ema) is ema.module:
        val_line += "  (EMA weights)"  # they picked best.pt and took the test
    trial = (f"{(identity or {}).get('name', run_dir.name)}: {val_line}  test/{primary} "
             f"{test[f'test/{primary}']:.4f}  (best epoch {state.best_epoch}/{state.epoch})")
    # a sweep's console shows only the trial line
    log.info("best epoch %d/%d: %s", state.best_epoch, state.epoch, val_line,
             extra={SWEEP_LINE: trial})
    log.info("test (best.pt): %s", "  ".join(f"{k} {v:.4f}" for k, v in test.items()))
    log.info("run folder: %s", run_dir)
    return value


def _build(cfg: DictConfig, task, device, resume: dict | None, resume_path: Path | None):
    """(data, model, optimizer, schedule, augmentation, ema, distiller) as the config says;
    rank 0 first (a download, a file index) and the others after, from what it left. ema and
    distiller: None unless trainer.ema.decay / distill.teacher are set."""
    with distributed.main_first():
        data = build_data(cfg.data, cfg.seed, device)
    prepare_targets(task, data)  # targets as the loss sees them (standardised regression)
    distributed.check_global_batch(cfg.data.batch_size)  # the global batch: each rank a share
    if distributed.launched():
        log.info("%d processes (%s): data.batch_size=%d is the global batch, %d per rank",
                 distributed.world(), distributed.backend(), cfg.data.batch_size,
                 cfg.data.batch_size // distributed.world())
    example, _ = next(iterate_batches(data.train, 2, device=device))
    model = build_model(cfg.model, example, data.num_classes, task)
    if resume is not None:
        config = {**OmegaConf.to_container(cfg, resolve=True)}
        check_model_fits(resume, model, config, resume_path)
    init_head_bias(model, data.train.labels, data.num_classes, cfg.init.head_bias, task)
    optimizer = build_optimizer(cfg.optimizer, model)
    steps_per_epoch = num_batches(data.train, data.batch_size)
    schedule = Schedule(cfg.schedule, optimizer, steps_per_epoch, cfg.trainer.max_epochs)
    augment = build_augmentation(cfg.augmentation, data)
    ema = build_ema(cfg.trainer, model)  # a copy of the initial weights, averaged as they train
    distiller = build_distiller(cfg.get("distill"), data, device, task)
    return data, model, optimizer, schedule, augment, ema, distiller


def _inside(cfg: DictConfig, model, data, device, run_dir: Path, tracker) -> Inside | None:
    """Pictures of the inside (rank 0): statistics on a fixed val batch from epoch 0 on."""
    if not cfg.inside.every_n_epochs:
        return None
    fixed, _ = next(iterate_batches(data.val, cfg.inside.batch_size, device=device))
    return Inside(model, fixed, run_dir, tracker)


def _split_hash(data) -> dict:
    """metrics.json's split_hash (the test split's identity) once the data is built."""
    return {"split_hash": data.split_hash} if data is not None else {}


def _best_weights(path: Path) -> dict | None:
    """best.pt's weights: the model's and, in an EMA run, the average's."""
    if not path.exists():
        return None
    best = load_checkpoint(path)
    return {k: best[k] for k in ("model", "ema") if k in best}


def _preflight(cfg: DictConfig, task, model, data, run_dir: Path, tracker, augment) -> dict:
    """The preflight's statuses by check (rank 0 runs it; the result reaches every rank)."""
    report = run_preflight(model, data, cfg.checks, run_dir, tracker, seed=cfg.seed,
                           make_optimizer=lambda m: build_optimizer(cfg.optimizer, m),
                           augment=augment, head_bias_requested=cfg.init.head_bias == "prior",
                           task=task)
    return {r.name: r.status for r in report.results}


def _carry_best_checkpoint(resume: Path, checkpoints: Path) -> None:
    """A resumed run tests the best weights seen so far, also those of the run it continues."""
    source = checkpoint_file(resume).parent / "best.pt"
    target = checkpoints / "best.pt"
    if source.exists() and source.resolve() != target.resolve():
        checkpoints.mkdir(parents=True, exist_ok=True)
        copy_checkpoint(source, target)


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    multirun = str(hc.mode) == "RunMode.MULTIRUN"
    try:
        distributed.init()  # a multi-task SLURM job joins here (torchrun's ranks already did)
        distributed.quiet_other_ranks()
        # before anything reads a value (the run's name formats optimizer.lr)
        distributed.together(validate, cfg)
        if multirun and not distributed.launched():  # parallel trials: one GPU, some cores
            compact_console()  # one line per trial; its train.log keeps everything
            with open_dict(cfg):
                cfg.trainer.device = runtime.spread_over_gpus(cfg.trainer.device, hc.job.num)
                cfg.trainer.num_threads = runtime.share_cores(cfg.trainer.num_threads,
                                                              hc.launcher.get("n_jobs"))
        value = train(cfg, Path(hc.runtime.output_dir), run_identity(cfg, hc))
    except runtime.Preempted as e:
        if distributed.is_main():
            log.warning("%s", e)
            print(f"\nnnrecipe: preempted: {e} (exit status {runtime.PREEMPTED_EXIT})",
                  file=sys.stderr)
        distributed.exit_quietly(runtime.PREEMPTED_EXIT)
    except UserError as e:
        if multirun:
            raise  # the sweeper records the trial as failed and goes on (every rank raises)
        if distributed.is_main() or not getattr(e, "settled", False):
            report_error(e, log)  # rank 0 speaks for all; another rank only for its own error
        distributed.exit_quietly(1)
    except Exception as e:
        if not distributed.launched() or not distributed.lost_a_rank(e):
            raise
        # another rank died (its own output says why): no traceback from this one
        distributed.exit_quietly(1)
    distributed.barrier()
    distributed.close()
    return value


nnrecipe.register_resolvers()  # ${run_folder:outputs}: hydra.run.dir

if __name__ == "__main__":
    if distributed.init():  # torchrun: join first, so that every rank gets rank 0's run folder
        if {"-m", "--multirun"} & set(sys.argv):  # every rank would run the whole sweep
            if distributed.is_main():
                print("nnrecipe: error: torchrun runs one job, not a sweep (-m): sweep with "
                      "hydra/launcher=slurm, whose trials may each use several GPUs",
                      file=sys.stderr)
            distributed.exit_quietly(1)
        distributed.share_run_stamp()
        sys.argv += distributed.hydra_overrides_for_other_ranks()
    main()
