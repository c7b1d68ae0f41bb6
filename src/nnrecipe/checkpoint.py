"""Checkpoints: written atomically (temp file + rename), so a crash never leaves half a file."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from nnrecipe.errors import UserError


def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def copy_checkpoint(source: Path, target: Path) -> None:
    """Make `target` hold what `source` holds now, atomically: a hard link (no bytes copied;
    later os.replace of `source` gives it a new inode, so `target` keeps this version),
    or a plain copy where the file system has no hard links."""
    tmp = target.with_name(f".{target.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path).expanduser()
    if path.is_dir():  # a run folder: take its last checkpoint
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: give a last.pt/best.pt or a run folder")
    try:
        # weights_only=False: our checkpoints hold RNG states and the config, not just tensors.
        # Only load checkpoints you wrote yourself.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise UserError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path} is not an nnrecipe checkpoint (no 'model' entry)")
    return state
