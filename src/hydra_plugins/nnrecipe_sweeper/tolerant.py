"""Hydra's Optuna sweeper, with its failure rate counted over the whole sweep.

Why: hydra-optuna-sweeper 1.3.0 checks `max_failure_rate` per batch of `n_jobs` trials, so with
n_jobs=1 a single diverged trial ends a 50-trial search. Here the sweep stops only once more
than max_failure_rate * n_trials trials have failed; each failed trial is still told to Optuna
as FAIL by the stock code. (Hydra loads sweepers only from the `hydra_plugins` package.)
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

from hydra.core.utils import JobStatus
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import OmegaConf

from nnrecipe.errors import UserError
from nnrecipe.sweeps import objective_direction

log = logging.getLogger(__name__)

# conf/hparams_search: `direction: ${objective_direction:${objective},${task._target_}}`
# (the task says each metric's direction: val/acc -> maximize, val/mae -> minimize)
OmegaConf.register_new_resolver("objective_direction", objective_direction, replace=True)


class TolerantOptunaSweeper(OptunaSweeper):
    def __init__(self, max_failure_rate: float, n_trials: int, **kwargs) -> None:
        super().__init__(max_failure_rate=1.0, n_trials=n_trials, **kwargs)  # never per batch
        self.allowed_failures = math.floor(max_failure_rate * n_trials)

    def setup(self, **kwargs) -> None:
        super().setup(**kwargs)
        impl = self.sweeper
        impl.launcher = FailureCountingLauncher(impl.launcher, self.allowed_failures)

    def sweep(self, arguments: list[str]) -> None:
        # As Hydra's grid sweeper does: the sweep's config and command line, read by each trial
        # (its W&B name) and by scripts/compare_runs.py.
        sweep_dir = Path(self.sweeper.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.sweeper.config, sweep_dir / "multirun.yaml")
        return super().sweep(arguments)


class FailureCountingLauncher:
    """Wraps the real launcher; raises the latest trial's error once too many trials failed."""

    def __init__(self, launcher, allowed_failures: int) -> None:
        self.launcher = launcher
        self.allowed_failures = allowed_failures
        self.failures = 0

    def launch(self, job_overrides, initial_job_idx):
        returns = self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        failed = [r for r in returns if _mark_failed(r)]
        self.failures += len(failed)
        for r in failed:
            log.warning("trial %s failed (%d failed so far, %d allowed): %s",
                        r.hydra_cfg.hydra.job.num if r.hydra_cfg else "?", self.failures,
                        self.allowed_failures, _error(r))
        if self.failures > self.allowed_failures:
            log.error("%d trials failed, more than max_failure_rate allows: stopping the sweep",
                      self.failures)
            error = failed[-1]._return_value
            if isinstance(error, UserError):  # a mistake a user can fix: its message, no traceback
                print(f"\nnnrecipe: error: the sweep stopped after {self.failures} failed trials "
                      f"(max_failure_rate); the last: {error}", file=sys.stderr)
                sys.exit(1)
            failed[-1].return_value  # noqa: B018 -- raises that trial's error, with its traceback
        return returns


def _mark_failed(ret) -> bool:
    """True when the trial failed. A non-finite objective becomes an error (the stock sweeper
    crashes on NaN), so Optuna records the trial as FAIL."""
    if ret.status != JobStatus.COMPLETED:
        return True
    try:
        value = float(ret.return_value)
    except (TypeError, ValueError):
        value = math.nan
    if math.isfinite(value):
        return False
    ret._return_value = ValueError(f"the trial returned {ret._return_value!r}, not a finite number")
    ret.status = JobStatus.FAILED
    return True


def _error(ret) -> str:
    value = ret._return_value
    return f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else repr(value)
