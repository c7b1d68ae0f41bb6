"""Tracking: every run is a W&B run (online, or offline to sync later), or nothing at all."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)


class Tracker:
    """What the rest of nnrecipe logs through. This base class keeps nothing (logger=none, and
    every rank but 0 of a distributed run)."""

    run_id: str | None = None  # stored in checkpoints: a resumed run continues this W&B run

    def log(self, metrics: dict, step: int | None = None) -> None: ...

    def summary(self, values: dict) -> None: ...

    def update_config(self, config: dict) -> None: ...

    # step: the training step the media belongs to (None: W&B's next step). The preflight logs
    # at step 0 so that training's own steps 1, 2, ... are not refused as going backwards.
    def image(self, key: str, path: Path, caption: str | None = None,
              step: int | None = None) -> None: ...

    def table(self, key: str, columns: list[str], rows: list[list],
              step: int | None = None) -> None: ...

    def finish(self, failed: bool = False, preempted: bool = False) -> None: ...


class WandbTracker(Tracker):
    def __init__(self, run):
        self.run = run
        self.run_id = run.id

    def log(self, metrics, step=None):
        self.run.log(metrics, step=step)

    def summary(self, values):
        self.run.summary.update(values)

    def update_config(self, config):
        self.run.config.update(config, allow_val_change=True)

    def image(self, key, path, caption=None, step=None):
        import wandb

        self.run.log({key: wandb.Image(str(path), caption=caption)}, step=step)

    def table(self, key, columns, rows, step=None):
        import wandb

        self.run.log({key: wandb.Table(columns=columns, data=rows)}, step=step)

    def finish(self, failed=False, preempted=False):
        offline = self.run.settings.mode == "offline"
        run_dir = Path(self.run.dir).parent
        if preempted:  # W&B shows it as preempted; the resumed run continues it (same id)
            self.run.mark_preempting()
        self.run.finish(exit_code=1 if failed or preempted else 0)
        if offline:
            log.info("W&B run saved offline. Upload it with:  wandb sync %s", run_dir)


def wandb_mode() -> str:
    """$WANDB_MODE if set; online when this machine has W&B credentials; otherwise offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return "online" if netrc.netrc().authenticators(host) else "offline"
    except (FileNotFoundError, netrc.NetrcParseError):
        return "offline"


def start_tracking(
    logger_cfg,
    run_dir: Path,
    config: dict,
    name: str,
    group: str | None = None,
    job_type: str | None = None,
    tags: list[str] | None = None,
    overrides: list[str] | None = None,
    run_id: str | None = None,
) -> Tracker:
    """The run's tracker; `run_id`: continue that W&B run (a resumed run's checkpoint holds it).
    Only rank 0 of a distributed run tracks: one W&B run per job."""
    from nnrecipe import distributed

    if logger_cfg.name == "none" or not distributed.is_main():
        return Tracker()
    import wandb  # slow to import: only when W&B is on

    if overrides is not None:  # the command-line (or sweeper) overrides that made this run
        config = {**config, "overrides": list(overrides)}
    run = wandb.init(
        project=logger_cfg.project,
        entity=logger_cfg.get("entity"),
        dir=str(run_dir),
        config=config,
        name=name,
        group=group or logger_cfg.get("group"),
        job_type=job_type or logger_cfg.get("job_type", "train"),
        tags=list(tags or []) + list(logger_cfg.get("tags") or []),
        mode=wandb_mode(),
        id=run_id,
        resume="allow" if run_id else None,
        reinit="finish_previous",  # sequential sweep trials in one process: never merge runs
        settings=wandb.Settings(silent=job_type == "trial"),  # a sweep: one console line a trial
    )
    return WandbTracker(run)


def run_identity(cfg, hydra_cfg) -> dict:
    """Name, group, job type, tags and overrides of the W&B run for this Hydra job.

    A multirun trial (sweeper or grid) is named after its number and swept values, grouped by
    its sweep (logger.group, or the sweep folder's name) and tagged with the fixed overrides.
    """
    choices = hydra_cfg.runtime.choices
    overrides = list(hydra_cfg.overrides.task)
    name = "-".join(
        [choices.get("model", "model"), choices.get("data", "data"), choices.get("optimizer", "")]
        + [f"lr{cfg.optimizer.lr:g}", f"s{cfg.seed}"]
    )
    if str(hydra_cfg.mode) != "RunMode.MULTIRUN":
        return {"name": name, "overrides": overrides}
    from nnrecipe.sweeps import parse_overrides, swept_keys, trial_name

    sweep = Path(hydra_cfg.sweep.dir)
    values = parse_overrides(overrides)
    keys = [k for k in swept_keys(sweep) if k in values] or list(values)
    return {
        "name": trial_name(hydra_cfg.job.num, {k: values[k] for k in keys}),
        "group": cfg.logger.get("group") or sweep.name,
        "job_type": "trial",
        "tags": [o[:64] for o in overrides if o.partition("=")[0].lstrip("+~") not in keys],
        "overrides": overrides,
    }
