"""Recipe steps 4 (regularize) and 6 (squeeze out the juice): tools that work on finished runs
(eval with error bars, ensembles, soups) and small pieces the training loop calls (EMA,
distillation, pictures of the inside).

Every tool reads a run through its checkpoint's own config (runs.py) and scores outputs through
the run's Task (batch_stats -> metrics), so nothing here names a loss.
"""

from nnrecipe.squeeze.stats import mean_interval, wilson_interval

__all__ = ["mean_interval", "wilson_interval"]
