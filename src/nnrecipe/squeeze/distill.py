"""Distillation (recipe step 6: "distill an ensemble into one net"): the student trains on
    alpha * task.loss(y) + (1 - alpha) * task.distill_loss(student, teacher, T)
(for classification T^2 * KL(teacher/T || student/T), Hinton et al. 2015). The teacher is a run
folder, or several / a sweep folder: an ensemble, averaged through task.average.

Teacher outputs for in-memory training data are computed once and looked up by content (a
random projection of each image, sorted: one matmul and a binary search per batch); a batch
that augmentation changed, and file data, go through the teacher on the fly.

The loop (see README, recipe step 6):
    distiller = build_distiller(cfg.distill, data, device, task)   # None when teacher is null
    ... loss = distiller.loss(outputs, targets, x) if distiller else task.loss(outputs, targets)
    ... tracker.log(distiller.last_parts)   # train/loss_task and train/loss_distill
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from nnrecipe.errors import UserError

log = logging.getLogger("nnrecipe")


class Teacher:
    """The teacher runs' models, averaged; outputs for the student's inputs."""

    def __init__(self, paths, data, device: torch.device, task):
        from nnrecipe.squeeze import runs

        self.task, self.models = task, []
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)  # one, or a list
        for path in runs.find_runs(paths):
            run = runs.load_run(path)
            own = runs.build_data_of(run.config, device)
            runs.task_of(run.config, own)  # its targets as its task sees them, like the student's
            for split in ("val", "test"):  # a teacher that saw the student's val/test leaks it
                if runs.split_fingerprint(own.splits[split]) != runs.split_fingerprint(
                        data.splits[split]):
                    raise UserError(
                        f"distill.teacher: {run.name} was trained on other splits than this run "
                        f"(its {split} split differs): it may have trained on this run's "
                        f"{split} samples. Distill from runs with the same data and split")
            if own.mean != data.mean or own.std != data.std:
                raise UserError(f"distill.teacher: {run.name} normalised its inputs with other "
                                f"mean/std ({own.mean}/{own.std} vs {data.mean}/{data.std})")
            self.models.append(runs.build_model_of(run, own, device, task))
        log.info("distill.teacher: %d model(s)", len(self.models))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.task.average([m(x).float() for m in self.models]).detach()


class Lookup:
    """Outputs precomputed for every row of `x_all`, found again by content."""

    def __init__(self, x_all: torch.Tensor, outputs: torch.Tensor, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.projection = torch.randn(x_all[0].numel(), generator=g, dtype=torch.float64
                                      ).to(x_all.device)
        keys = self._keys(x_all)
        self.keys, order = keys.sort()
        self.outputs = outputs[order.to(outputs.device)]

    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).double() @ self.projection

    def find(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(found mask [B], outputs [B, ...] where found)."""
        k = self._keys(x)
        # the nearest key: rounding in another batch's matmul can put a row's key a hair above
        # its stored twin, and searchsorted then points one past it
        right = torch.searchsorted(self.keys, k).clamp(max=len(self.keys) - 1)
        left = (right - 1).clamp(min=0)
        pos = torch.where((self.keys[left] - k).abs() < (self.keys[right] - k).abs(), left, right)
        found = (self.keys[pos] - k).abs() <= 1e-9 * (1 + k.abs())
        return found, self.outputs[pos]


class Distiller:
    def __init__(self, teacher, task, alpha: float, temperature: float, lookup=None):
        if not 0 <= alpha <= 1:
            raise UserError(f"distill.alpha={alpha}: use a weight in [0, 1] (1: no teacher)")
        if not temperature > 0:
            raise UserError(f"distill.temperature={temperature}: must be positive")
        self.teacher, self.task, self.lookup = teacher, task, lookup
        self.alpha, self.temperature = alpha, temperature
        self.last_parts: dict[str, torch.Tensor] = {}

    def teacher_outputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.lookup is None:
            return self.teacher(x)
        found, outputs = self.lookup.find(x)
        if not found.all():  # augmented (or unseen) images: ask the teacher
            outputs = outputs.clone()
            outputs[~found] = self.teacher(x[~found]).to(outputs.dtype)
        return outputs

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """What backward() is called on; its two parts (detached) in `last_parts`."""
        task_loss = self.task.loss(outputs, targets)
        soft = self.task.distill_loss(outputs, self.teacher_outputs(x), self.temperature)
        self.last_parts = {"train/loss_task": task_loss.detach(),
                           "train/loss_distill": soft.detach()}
        return self.alpha * task_loss + (1 - self.alpha) * soft


def build_distiller(cfg, data, device: torch.device, task) -> Distiller | None:
    """distill.teacher (null: off), distill.alpha, distill.temperature."""
    if cfg is None or not cfg.get("teacher"):
        return None
    teacher = Teacher(cfg.teacher, data, device, task)
    lookup = None
    if hasattr(data.train, "x"):  # in memory: every training image through the teacher once
        x = data.train.x
        outputs = torch.cat([teacher(x[i:i + 1024]) for i in range(0, len(x), 1024)])
        lookup = Lookup(x, outputs)
    return Distiller(teacher, task, float(cfg.alpha), float(cfg.temperature), lookup)
