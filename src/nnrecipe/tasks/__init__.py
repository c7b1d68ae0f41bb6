"""Tasks: what is learned (loss, metrics, objectives, init, output contract, splits).

    task=classification (default) | task=regression | task=multilabel

Your own task: subclass nnrecipe.tasks.Task and point a conf/task/*.yaml at it (`_target_`).
"""

from nnrecipe.tasks.base import Task, add_stats, plain_split
from nnrecipe.tasks.classification import Classification, class_prior
from nnrecipe.tasks.multilabel import MultiLabel, mean_average_precision
from nnrecipe.tasks.regression import Regression

__all__ = ["Classification", "MultiLabel", "Regression", "Task", "add_stats", "class_prior",
           "mean_average_precision", "plain_split"]
