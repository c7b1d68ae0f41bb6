"""nnrecipe's entry point: compose -> build -> preflight -> fit -> test -> objective.

    python src/train.py                                  # the default job (digits, convnet)
    python src/train.py model=mlp optimizer=sgd optimizer.lr=0.1
    python src/train.py -m hparams_search=random         # a random-search sweep

Returns the best val/loss, the objective Hydra's sweepers minimise.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nnrecipe import runtime
from nnrecipe.augment import build_augmentation
from nnrecipe.checkpoint import load_checkpoint
from nnrecipe.checks import prediction_dynamics, run_preflight, save_dynamics
from nnrecipe.data import build_data, iterate_batches, num_batches
from nnrecipe.errors import UserError
from nnrecipe.loop import evaluate, fit
from nnrecipe.models import build_model, init_head_bias
from nnrecipe.optim import Schedule, build_optimizer
from nnrecipe.tracking import run_identity, start_tracking

log = logging.getLogger("nnrecipe")


def train(cfg: DictConfig, run_dir: Path, identity: dict | None = None) -> float:
    runtime.seed_everything(cfg.seed)
    runtime.set_threads(cfg.trainer.num_threads)
    device = runtime.pick_device(cfg.trainer.device)

    # Build: one object per config group.
    data = build_data(cfg.data, cfg.seed, device)
    example, _ = next(iterate_batches(data.train, 2, device=device))
    model = build_model(cfg.model, example, data.num_classes)
    if cfg.init.head_bias == "prior":
        init_head_bias(model, data.train.labels, data.num_classes)
    optimizer = build_optimizer(cfg.optimizer, model)
    steps_per_epoch = num_batches(data.train, data.batch_size)
    schedule = Schedule(cfg.schedule, optimizer, steps_per_epoch, cfg.trainer.max_epochs)
    augment = build_augmentation(cfg.augmentation, data)
    resume = load_checkpoint(cfg.trainer.resume) if cfg.trainer.resume else None
    checkpoints = run_dir / "checkpoints"
    if resume is not None:
        _carry_best_checkpoint(Path(cfg.trainer.resume), checkpoints)

    config = OmegaConf.to_container(cfg, resolve=True)
    tracker = start_tracking(cfg.logger, run_dir, config, **(identity or {"name": run_dir.name}))
    try:
        # Recipe step 2: sanity checks on copies; a FAIL raises PreflightFailed (a UserError).
        run_preflight(model, data, cfg.checks, run_dir, tracker, seed=cfg.seed,
                      make_optimizer=lambda m: build_optimizer(cfg.optimizer, m),
                      augment=augment, head_bias_requested=cfg.init.head_bias == "prior")
        if cfg.checks.only:
            tracker.finish()
            return math.nan
        dynamics = prediction_dynamics(model, data, cfg.checks)
        state = fit(model, optimizer, schedule, data, cfg.trainer, tracker, checkpoints,
                    seed=cfg.seed, augment=augment, resume=resume, config=config,
                    dynamics=dynamics)
        save_dynamics(dynamics, run_dir, tracker, state.step)

        # Test once, with the weights that had the best val/loss.
        if (checkpoints / "best.pt").exists():
            model.load_state_dict(load_checkpoint(checkpoints / "best.pt")["model"])
        test = evaluate(model, data.test, cfg.trainer.eval_batch_size, cfg.trainer.precision,
                        data.num_workers)
        tracker.log({"test/loss": test["loss"], "test/acc": test["acc"]}, step=state.step)
        tracker.summary({"best/val_loss": state.best_val_loss, "best/val_acc": state.best_val_acc,
                         "best/epoch": state.best_epoch, "test/loss": test["loss"],
                         "test/acc": test["acc"]})
    except BaseException:
        tracker.finish(failed=True)
        raise
    tracker.finish()
    log.info("best epoch %d/%d: val/loss %.4f  val/acc %.4f", state.best_epoch, state.epoch,
             state.best_val_loss, state.best_val_acc)
    log.info("test (best.pt): test/loss %.4f  test/acc %.4f", test["loss"], test["acc"])
    log.info("run folder: %s", run_dir)
    return state.best_val_loss


def _carry_best_checkpoint(resume: Path, checkpoints: Path) -> None:
    """A resumed run tests the best weights seen so far, also those of the run it continues."""
    source = (resume / "checkpoints" if resume.is_dir() else resume.parent) / "best.pt"
    target = checkpoints / "best.pt"
    if source.exists() and source.resolve() != target.resolve():
        checkpoints.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    try:
        return train(cfg, Path(hc.runtime.output_dir), run_identity(cfg, hc))
    except UserError as e:
        if str(hc.mode) == "RunMode.MULTIRUN":
            raise  # the sweeper records the trial as failed and goes on
        log.error("%s", e)
        print(f"\nnnrecipe: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    main()
