"""nnrecipe's entry point: compose -> build -> preflight -> fit -> test -> objective.

    python src/train.py                                  # the default job (digits, convnet)
    python src/train.py model=mlp optimizer=sgd optimizer.lr=0.1
    python src/train.py -m hparams_search=random         # a random-search sweep

Returns the objective (`objective`: a val metric of the task, e.g. val/loss or val/acc, at the
epoch with the lowest val/loss) that Hydra's sweepers optimise; a sweep's trial also leaves
metrics.json for scripts/compare_runs.py.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from nnrecipe import runtime
from nnrecipe.augment import build_augmentation
from nnrecipe.checkpoint import (
    checkpoint_file,
    config_changes,
    copy_checkpoint,
    load_checkpoint,
)
from nnrecipe.checks import prediction_dynamics, run_preflight, save_dynamics
from nnrecipe.config import validate
from nnrecipe.data import build_data, iterate_batches, num_batches
from nnrecipe.errors import UserError
from nnrecipe.loop import Diverged, evaluate, fit
from nnrecipe.models import build_model, init_head_bias
from nnrecipe.optim import Schedule, build_optimizer
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
    (None with checks.only: the preflight ran, nothing trained)."""
    validate(cfg)  # wrong types and ranges: one message naming the key, before any work
    runtime.seed_everything(cfg.seed)
    runtime.set_threads(cfg.trainer.num_threads)
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on GPUs that have them: any launcher
    task = build_task(cfg.task)  # loss, metrics, init expectations (conf/task/)
    objective = cfg.get("objective", "val/loss")
    objective_direction(objective, task)  # a bad objective fails before any work
    device = runtime.pick_device(cfg.trainer.device)

    # The W&B run starts first, so that a run failing anywhere below is a failed W&B run.
    config = OmegaConf.to_container(cfg, resolve=True)
    tracker = start_tracking(cfg.logger, run_dir, config, **(identity or {"name": run_dir.name}))
    try:
        # Build: one object per config group.
        data = build_data(cfg.data, cfg.seed, device)
        prepare_targets(task, data)  # targets as the loss sees them (standardised regression)
        config = OmegaConf.to_container(cfg, resolve=True)
        tracker.update_config(config)  # with the values found while loading the data
        example, _ = next(iterate_batches(data.train, 2, device=device))
        model = build_model(cfg.model, example, data.num_classes, task)
        init_head_bias(model, data.train.labels, data.num_classes, cfg.init.head_bias, task)
        optimizer = build_optimizer(cfg.optimizer, model)
        steps_per_epoch = num_batches(data.train, data.batch_size)
        schedule = Schedule(cfg.schedule, optimizer, steps_per_epoch, cfg.trainer.max_epochs)
        augment = build_augmentation(cfg.augmentation, data)
        resume = load_checkpoint(cfg.trainer.resume) if cfg.trainer.resume else None
        checkpoints = run_dir / "checkpoints"
        if resume is not None:
            _carry_best_checkpoint(Path(cfg.trainer.resume), checkpoints)
            if changed := config_changes(resume.get("config"), config):
                log.warning("resuming with a config that differs from the checkpoint's in %s: "
                            "the run will not continue exactly", ", ".join(changed))

        # Recipe step 2: sanity checks on copies; a FAIL raises PreflightFailed (a UserError).
        report = run_preflight(model, data, cfg.checks, run_dir, tracker, seed=cfg.seed,
                               make_optimizer=lambda m: build_optimizer(cfg.optimizer, m),
                               augment=augment, head_bias_requested=cfg.init.head_bias == "prior",
                               task=task)
        if cfg.checks.only:  # no objective: a sweeper records such a trial as failed
            write_metrics(run_dir, "checked", checks={r.name: r.status for r in report.results})
            tracker.finish()
            return None
        dynamics = prediction_dynamics(model, data, cfg.checks, untrained=resume is None)
        state = fit(model, optimizer, schedule, data, cfg.trainer, tracker, checkpoints,
                    seed=cfg.seed, augment=augment, resume=resume, config=config,
                    dynamics=dynamics, task=task)
        save_dynamics(dynamics, run_dir, tracker, state.step)
        if state.best_epoch < 0:
            raise Diverged("no epoch reached a finite val/loss: lower optimizer.lr or check the "
                           "data (trainer.max_epochs must be at least 1)")

        # Test once, with the weights that had the best val/loss.
        if (checkpoints / "best.pt").exists():
            model.load_state_dict(load_checkpoint(checkpoints / "best.pt")["model"])
        test = evaluate(model, data.test, cfg.trainer.eval_batch_size, cfg.trainer.precision,
                        data.num_workers, task)
        test = {f"test/{m}": v for m, v in test.items()}
        tracker.log(test, step=state.step)
        summary = {"best/val_loss": state.best_val_loss, "best/epoch": state.best_epoch,
                   # "at_best_loss": the epoch chosen by val/loss, not each metric's own best
                   **{f"best/val_{m}_at_best_loss": v for m, v in state.best_val.items()
                      if m != "loss"}, **test}
        tracker.summary(summary)
        value = objective_value(objective, state.best_val, task)
    except BaseException as e:
        write_metrics(run_dir, "failed", error=f"{type(e).__name__}: {e}")
        tracker.finish(failed=True)
        raise
    write_metrics(run_dir, "finished", objective=value, summary=summary, history=state.history)
    tracker.finish()
    primary = task.primary_metric()
    val_line = "  ".join(f"val/{m} {v:.4f}" for m, v in state.best_val.items())
    trial = (f"{(identity or {}).get('name', run_dir.name)}: {val_line}  test/{primary} "
             f"{test[f'test/{primary}']:.4f}  (best epoch {state.best_epoch}/{state.epoch})")
    # a sweep's console shows only the trial line
    log.info("best epoch %d/%d: %s", state.best_epoch, state.epoch, val_line,
             extra={SWEEP_LINE: trial})
    log.info("test (best.pt): %s", "  ".join(f"{k} {v:.4f}" for k, v in test.items()))
    log.info("run folder: %s", run_dir)
    return value


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
    try:
        validate(cfg)  # before anything reads a value (the run's name formats optimizer.lr)
        if str(hc.mode) == "RunMode.MULTIRUN":  # parallel trials: one GPU, a share of the cores
            compact_console()  # one line per trial; its train.log keeps everything
            with open_dict(cfg):
                cfg.trainer.device = runtime.spread_over_gpus(cfg.trainer.device, hc.job.num)
                cfg.trainer.num_threads = runtime.share_cores(cfg.trainer.num_threads,
                                                              hc.launcher.get("n_jobs"))
        return train(cfg, Path(hc.runtime.output_dir), run_identity(cfg, hc))
    except UserError as e:
        if str(hc.mode) == "RunMode.MULTIRUN":
            raise  # the sweeper records the trial as failed and goes on
        log.error("%s", e)
        print(f"\nnnrecipe: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
