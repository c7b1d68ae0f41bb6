"""Tasks: what is learned (loss, metrics, objectives, init, output contract, splits).

    task=classification (default) | task=regression | task=multilabel

Your own task: subclass nnrecipe.tasks.Task and point a conf/task/*.yaml at it (`_target_`).
"""

from __future__ import annotations

from nnrecipe.errors import UserError, instantiate
from nnrecipe.tasks.base import Task, add_stats, plain_split, reduce_stats
from nnrecipe.tasks.classification import Classification, class_prior
from nnrecipe.tasks.multilabel import MultiLabel, mean_average_precision
from nnrecipe.tasks.regression import Regression

# what each kind of data target is learned by by default (DataBundle.targets -> conf/task/)
TASK_FOR_TARGETS = {"classes": "classification", "values": "regression",
                    "labels": "multilabel"}


def build_task(cfg) -> Task:
    """The configured task (conf/task/*.yaml, built from its `_target_`)."""
    task = instantiate(cfg, "task")
    if not isinstance(task, Task):
        raise UserError(f"task._target_={cfg.get('_target_')} built a {type(task).__name__}: "
                        f"it must build a subclass of nnrecipe.tasks.Task")
    return task


def task_class(task) -> type[Task]:
    """A Task class from an instance, a class, a `_target_` string or None (classification)."""
    if task is None:
        return Classification
    if isinstance(task, Task):
        return type(task)
    if isinstance(task, type) and issubclass(task, Task):
        return task
    from hydra.utils import get_class

    try:
        return get_class(str(task))
    except Exception as e:
        raise UserError(f"task._target_={task!r} cannot be imported: {e}") from None


def prepare_targets(task: Task, data, data_name: str = "data") -> None:
    """Fit the task to the training targets (e.g. their mean and std) and store every split's
    targets as the loss sees them (standardised for regression), once, before training: the
    loop, evaluate() and the checks then use split.y as it is."""
    kind = getattr(data, "targets", "classes")
    if kind != task.targets:
        want = TASK_FOR_TARGETS.get(kind, "a task for them")
        raise UserError(
            f"{data_name} holds {kind} targets but task={task.name} learns {task.targets}: "
            f"use task={want} (or a data option with {task.targets} targets)")
    task.fit_targets(data.train.labels)
    for split in data.splits.values():
        if hasattr(split, "x"):
            split.y = task.encode(split.y)
        elif task.targets != "classes":  # files carry class indices only
            raise UserError(f"task={task.name} needs in-memory data (a TensorSplit): files "
                            f"carry class labels")


__all__ = ["TASK_FOR_TARGETS", "Classification", "MultiLabel", "Regression", "Task",
           "add_stats", "build_task", "class_prior", "mean_average_precision", "plain_split",
           "prepare_targets", "reduce_stats", "task_class"]
