"""A finished run as the squeeze tools see it: its checkpoint, its own config, and the model and
data rebuilt from that config, so that a tool scores exactly what training scored."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from nnrecipe.checkpoint import checkpoint_file, load_checkpoint
from nnrecipe.errors import UserError

log = logging.getLogger("nnrecipe")

# The checkpoint a run folder means: the weights training tested (best val/loss), else the last.
PREFER = ("best.pt", "last.pt")
# Data keys that change how batches are read, not which samples are in which split.
DATA_FREE = ("batch_size", "num_workers")


@dataclass
class Run:
    name: str
    file: Path      # the checkpoint read
    config: dict    # the training run's resolved config
    weights: dict   # the model's state_dict (the EMA's when the run evaluated with EMA)


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders or checkpoint files as given; a folder without checkpoints/ (a sweep) stands
    for its sub-folders that have one. Trials that wrote no checkpoint (failed) are skipped."""
    found = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p} does not exist: give run folders, a sweep folder or .pt files")
        if p.is_file() or (p / "checkpoints").is_dir():
            found.append(p)
            continue
        trials = sorted((q for q in p.iterdir() if (q / "checkpoints").is_dir()),
                        key=lambda q: (not q.name.isdigit(), int(q.name) if q.name.isdigit()
                                       else 0, q.name))
        if not trials:
            raise UserError(f"{p} holds no run: neither checkpoints/ nor sub-folders with one "
                            f"(a run folder of src/train.py, or a sweep folder)")
        skipped = [q.name for q in p.iterdir() if q.is_dir() and q not in trials
                   and (q / "metrics.json").exists()]
        if skipped:
            log.warning("skipping %d trial(s) of %s without a checkpoint (failed?): %s",
                        len(skipped), p, ", ".join(sorted(skipped)))
        found += trials
    return found


def load_run(path: str | Path) -> Run:
    file = checkpoint_file(path, prefer=PREFER)
    ckpt = load_checkpoint(file)
    config = ckpt.get("config")
    if not config:
        raise UserError(f"{file} holds no config: only checkpoints written by src/train.py can be "
                        f"rebuilt (train with this version, or load the weights yourself)")
    weights = ckpt["model"]
    ema = (config.get("trainer") or {}).get("ema") or {}
    with_ema = ema.get("decay") is not None and ema.get("evaluate_with", "ema") == "ema"
    if with_ema and ckpt.get("ema"):
        weights = ema_weights(ckpt["ema"], weights)
    path = Path(path)
    name = trial_label(path) if path.is_dir() else f"{file.parent.parent.name}/{file.name}"
    return Run(name=name, file=file, config=config, weights=weights)


def trial_label(run_dir: Path) -> str:
    """A sweep trial's folder named as the sweep names it (trial1-lr=0.003), else the folder."""
    from nnrecipe.sweeps import parse_overrides, swept_keys, trial_name

    overrides = run_dir / ".hydra" / "overrides.yaml"
    if not (run_dir.name.isdigit() and overrides.exists()):
        return run_dir.name
    import yaml

    values = parse_overrides(yaml.safe_load(overrides.read_text()) or [])
    keys = [k for k in swept_keys(run_dir.parent) if k in values]
    return trial_name(int(run_dir.name), {k: values[k] for k in keys}) if keys else run_dir.name


def ema_weights(ema_state: dict, raw: dict) -> dict:
    """The model's state_dict from a saved ModelEmaV3 state (its keys carry a `module.` prefix)."""
    strip = {k.removeprefix("module."): v for k, v in ema_state.items()}
    return strip if strip.keys() == raw.keys() else raw


def task_of(config: dict, data=None):
    """The run's Task (its `task` group; classification for runs from before it), prepared on
    `data` as training prepared it: fitted to the training targets, every in-memory split's
    targets encoded once (regression's standardisation), so outputs score against split.y."""
    from nnrecipe.tasks import Classification

    task_cfg = config.get("task")
    if isinstance(task_cfg, dict) and task_cfg.get("_target_"):
        from nnrecipe.tasks import build_task

        task = build_task(OmegaConf.create(task_cfg))
    else:
        task = Classification()
    if data is not None:
        from nnrecipe.tasks import prepare_targets

        prepare_targets(task, data)
    return task


def build_data_of(config: dict, device: torch.device):
    """The run's data, split and normalised as training had it.

    Training writes the mean/std it computed back into its config rounded to 4 digits; using
    the rounded values would move every input a little (and could flip a borderline prediction),
    so they are computed again, exactly, and the saved ones kept only when they differ (the
    user gave them)."""
    from nnrecipe.data import build_data

    data_cfg = OmegaConf.create(config["data"])
    saved_mean, saved_std = data_cfg.get("mean"), data_cfg.get("std")
    data_cfg.mean = data_cfg.std = None
    data = build_data(data_cfg, config.get("seed", 0), device)
    if saved_mean is not None and (_rounded(data.mean) != list(saved_mean)
                                   or _rounded(data.std) != list(saved_std)):
        data = build_data(OmegaConf.create(config["data"]), config.get("seed", 0), device)
    return data


def _rounded(values) -> list[float]:
    return [round(v, 4) for v in values]


def build_model_of(run: Run, data, device: torch.device, task=None) -> nn.Module:
    """The run's model with its weights, in eval mode. No download, no init_from: the weights
    come from the checkpoint."""
    from nnrecipe.data import iterate_batches
    from nnrecipe.models import build_model

    model_cfg = OmegaConf.create(run.config["model"])
    for key, off in (("pretrained", False), ("init_from", None)):
        if key in model_cfg:
            model_cfg[key] = off
    example, _ = next(iterate_batches(data.train, 2, device=device))
    model = build_model(model_cfg, example, data.num_classes, task)
    try:
        model.load_state_dict(run.weights)
    except RuntimeError as e:
        raise UserError(f"{run.file}: its weights do not fit the model its config builds "
                        f"({e})") from e
    return model.to(device).eval()


@torch.no_grad()
def predict(model: nn.Module, split, batch_size: int, precision: str = "fp32",
            num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (float32, CPU) and targets of the whole split, in order, in eval mode."""
    from nnrecipe.data import iterate_batches
    from nnrecipe.loop import autocast

    device = next(model.parameters()).device
    model.eval()
    outputs, targets = [], []
    for x, y in iterate_batches(split, batch_size, device=device, num_workers=num_workers):
        with autocast(device, precision):
            outputs.append(model(x).float().cpu())
        targets.append(y.cpu())
    return torch.cat(outputs), torch.cat(targets)


def split_fingerprint(split) -> str:
    """A hash of what a split holds (inputs and targets, or file list and targets): two runs
    whose val and test fingerprints agree were scored on the same samples. The data package's
    split_hash where it has one (file lists hash without reading a pixel)."""
    try:
        from nnrecipe.data.splits import split_hash
    except ImportError:  # older data package: hash here
        split_hash = None
    if split_hash is not None:
        return split_hash(split)
    h = hashlib.sha1()
    if hasattr(split, "x"):
        h.update(split.y.cpu().numpy().tobytes())
        h.update(split.x.detach().cpu().float().numpy().tobytes())
    else:
        h.update("\n".join(map(str, split.paths)).encode(errors="surrogateescape"))
        h.update(str(list(split.targets)).encode())
    return h.hexdigest()[:16]


def data_identity(config: dict) -> dict:
    """The data config that decides the splits' content (batch size and workers aside), and
    the task that reads the targets."""
    data = {k: v for k, v in (config.get("data") or {}).items() if k not in DATA_FREE}
    task = (config.get("task") or {}).get("_target_", "nnrecipe.tasks.Classification")
    return {"data": data, "seed": config.get("seed"), "task": task}
