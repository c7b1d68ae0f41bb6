"""Start from weights (recipe step 4, "pretrain"; step 6, fine-tuning): model.init_from loads a
previous run's weights, or any state_dict, into the freshly built model, and
model.freeze_epochs trains only the head for the first epochs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nnrecipe.errors import UserError

log = logging.getLogger("nnrecipe")

# Set on a model whose classifier head came from init_from: init_head_bias keeps its bias.
HEAD_LOADED = "_nnrecipe_head_loaded"


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)         # in the file, no place here
    reinitialised: list[str] = field(default_factory=list)   # here, but not (as shaped) there

    def summary(self, source) -> str:
        def some(keys):
            return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")

        lines = [f"model.init_from={source}: loaded {len(self.loaded)} tensors"]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} (not in this model or another shape): "
                         f"{some(self.skipped)}")
        if self.reinitialised:
            lines.append(f"  re-initialised {len(self.reinitialised)}: "
                         f"{some(self.reinitialised)}")
        return "\n".join(lines)


def read_state_dict(source: str | Path) -> dict:
    """A state_dict from a run folder (checkpoints/best.pt, else last.pt), an nnrecipe checkpoint,
    a plain state_dict (.pt/.pth/.bin) or a .safetensors file."""
    from nnrecipe.checkpoint import checkpoint_file

    path = checkpoint_file(source, prefer=("best.pt", "last.pt"))
    if not path.is_file():
        raise UserError(f"model.init_from={source}: {path} does not exist (give a run folder, a "
                        f"checkpoint or a state_dict file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"model.init_from={source}: {path} is unreadable "
                        f"({type(e).__name__}: {e})") from e
    for key in ("model", "state_dict", "model_state_dict"):  # nnrecipe, Lightning/timm, others
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise UserError(f"model.init_from={source}: {path} holds no state_dict (a dict of "
                        f"tensors, or a checkpoint with a 'model' entry)")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}


@torch.no_grad()
def load_matching(model: nn.Module, state: dict) -> LoadReport:
    """Copy every tensor whose name and shape match; the rest of the model keeps its init."""
    from nnrecipe.models.build import classifier_head

    own = model.state_dict()
    report = LoadReport()
    for key, value in state.items():
        if key in own and own[key].shape == value.shape:
            own[key].copy_(value.to(own[key].dtype))
            report.loaded.append(key)
        else:
            report.skipped.append(key)
    report.reinitialised = [k for k in own if k not in report.loaded]
    head = classifier_head(model)
    head_keys = {name for name, p in model.named_parameters()
                 if head is not None and any(p is q for q in head.parameters())}
    setattr(model, HEAD_LOADED, bool(head_keys) and head_keys <= set(report.loaded))
    return report


def init_from(model: nn.Module, source: str | Path) -> LoadReport:
    """Load `source` into `model` and say what happened. Nothing loaded is an error: the source
    is another architecture, and training it "from these weights" would silently start fresh."""
    report = load_matching(model, read_state_dict(source))
    trunk = {id(p) for p in trunk_parameters(model)}
    trunk_keys = {n for n, p in model.named_parameters() if id(p) in trunk}
    if not report.loaded or (trunk_keys and not trunk_keys & set(report.loaded)):
        raise UserError(f"model.init_from={source}: no tensor of it fits this model's body "
                        f"(names or shapes differ: e.g. {report.skipped[:3]}): it comes from "
                        f"another architecture. Use the model config of the run it comes from")
    log.info("%s", report.summary(source))
    return report


def trunk_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter but the classifier head's."""
    from nnrecipe.models.build import classifier_head

    head = classifier_head(model)
    mine = {id(p) for p in head.parameters()} if head is not None else set()
    return [p for p in model.parameters() if id(p) not in mine]


def set_trunk_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (or unfreeze) all but the head. Frozen parameters get no gradient, so the
    optimizer (built over all of them) leaves them and their weight decay alone until unfrozen.
    The loop calls it at the start of each epoch: frozen while epoch < model.freeze_epochs."""
    if frozen and trunk_parameters(model) == list(model.parameters()):
        raise UserError("model.freeze_epochs: the model has no recognisable head (a final "
                        "Linear) to train while the rest is frozen")
    for p in trunk_parameters(model):
        p.requires_grad_(not frozen)
