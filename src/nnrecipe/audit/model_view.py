"""After training, the model's view of the data: where is it wrong, and is the data to blame?

The recipe: "if the model's predictions do not match what you see in the data, something is
off". A confusion matrix, per-class accuracy and the highest-loss examples of each split, shown
with given and predicted labels, put the model's mistakes next to the pictures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from nnrecipe.audit.pool import Pool
from nnrecipe.checkpoint import checkpoint_file, load_checkpoint
from nnrecipe.data import DataBundle, iterate_batches
from nnrecipe.errors import UserError
from nnrecipe.models import build_model


def load_trained(path: str | Path) -> tuple[dict, Path]:
    """The checkpoint's state and file, with a clear error when it lacks its training config."""
    path = checkpoint_file(path, prefer=("best.pt", "last.pt"))  # a run folder: its best weights
    state = load_checkpoint(path)
    if not state.get("config"):
        raise UserError(f"checkpoint {path} holds no training config: write it with src/train.py")
    return state, path


def check_same_data(train_data: dict, data_cfg) -> None:
    """The model must see the data it was trained on: same source and the same classes."""
    for key in ("_target_", "name", "root", "num_classes", "in_chans", "image_size"):
        want, got = train_data.get(key), data_cfg.get(key)
        if key == "root" and want is not None and got is not None:  # same folder, any spelling
            want, got = (str(Path(p).expanduser().resolve()) for p in (want, got))
        if want is not None and got is not None and str(want) != str(got):
            raise UserError(
                f"the checkpoint was trained with data.{key}={want} but this audit has "
                f"data.{key}={got}: pass the training run's data options (e.g. data=... "
                f"data.{key}={want})"
            )


def model_view(state: dict, data: DataBundle, pool: Pool, limit: int,
               device: torch.device | str = "cpu") -> dict:
    """Confusion matrix, per-class accuracy and highest-loss examples of the trained model."""
    config = OmegaConf.create(state["config"])
    if "pretrained" in config.model:
        config.model.pretrained = False  # the checkpoint has the weights: download nothing
    if "init_from" in config.model:
        config.model.init_from = None  # the same (and the file it names may be gone)
    example, _ = next(iterate_batches(data.train, 2))
    model = build_model(config.model, example, data.num_classes)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UserError(f"the checkpoint's weights do not fit its model config ({e})") from e
    model.to(device).eval()
    position = {(s, int(i)): p for p, (s, i) in enumerate(zip(pool.split, pool.index, strict=True))}
    k = data.num_classes
    view = {"confusion_matrix": {}, "per_class_accuracy": {}, "accuracy": {}, "highest_loss": {}}
    for name, split in data.splits.items():
        loss, pred = _predict(model, split, data.num_workers, device)
        y = split.labels.numpy()
        confusion = np.zeros((k, k), dtype=np.int64)
        np.add.at(confusion, (y, pred), 1)
        view["confusion_matrix"][name] = confusion.tolist()
        per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
        view["per_class_accuracy"][name] = {c: round(float(a), 4) for c, a in
                                            zip(pool.class_names, per_class, strict=True)}
        view["accuracy"][name] = round(float((pred == y).mean()), 4)
        worst = np.argsort(-loss, kind="stable")[:limit]
        view["highest_loss"][name] = [
            {**pool.item(position[(name, int(i))]), "given_label": pool.class_names[y[i]],
             "predicted_label": pool.class_names[pred[i]], "loss": round(float(loss[i]), 4),
             "pool": position[(name, int(i))]}
            for i in worst if (name, int(i)) in position
        ]
    return view


@torch.no_grad()
def _predict(model, split, num_workers: int, device) -> tuple[np.ndarray, np.ndarray]:
    losses, preds = [], []
    for x, y in iterate_batches(split, 512, num_workers=num_workers):
        x, y = x.to(device), y.to(device)
        logits = model(x).float()
        losses.append(F.cross_entropy(logits, y, reduction="none"))
        preds.append(logits.argmax(1))
    return torch.cat(losses).cpu().numpy(), torch.cat(preds).cpu().numpy()
