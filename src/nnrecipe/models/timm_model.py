"""Any timm model by name, with a clear error for names timm does not know."""

from __future__ import annotations

import difflib
from pathlib import Path

from torch import nn

from nnrecipe.errors import UserError


def timm_model(
    name: str, num_classes: int, in_chans: int = 3, pretrained: bool = False,
    pretrained_file: str | None = None, drop_path_rate: float = 0.0, **kwargs
) -> nn.Module:
    """timm.create_model. `pretrained`: timm's weights for `name`, from the Hugging Face cache
    (downloaded once where there is a network) or from `pretrained_file` (offline: any
    .safetensors/.pth of the same architecture); the head is re-made for num_classes.
    `drop_path_rate`: stochastic depth, for the models that have residual blocks."""
    import timm  # slow to import: only when a timm model is asked for

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UserError(
            f"timm has no model named {name!r}.{hint} "
            f"List them with: python -c \"import timm; print(timm.list_models('*{name[:4]}*'))\""
        )
    if pretrained_file:
        if not Path(pretrained_file).expanduser().is_file():
            raise UserError(f"model.pretrained_file={pretrained_file} does not exist")
        pretrained = True
        kwargs["pretrained_cfg_overlay"] = {"file": str(Path(pretrained_file).expanduser())}
    elif pretrained and (cached := cached_weights(name)):
        kwargs["pretrained_cfg_overlay"] = {"file": cached}  # no network call at all
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    try:
        return timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs
        )
    except TypeError as e:
        raise UserError(f"timm model {name!r} rejected its arguments {sorted(kwargs)}: {e}") from e
    except Exception as e:
        if not pretrained:
            raise
        raise UserError(
            f"could not load pretrained weights for {name!r} ({type(e).__name__}: {e}). "
            f"timm reads them from the Hugging Face cache ($HF_HOME, default ~/.cache/huggingface)"
            f". Offline: on a machine with a network run `python -c \"import timm; "
            f"timm.create_model('{name}', pretrained=True)\"`, then copy the cache here, or "
            f"download the weights file and set model.pretrained_file=/path/to/"
            f"model.safetensors; or set model.pretrained=false"
        ) from e


def cached_weights(name: str) -> str | None:
    """The file of timm's default weights for `name` in the local Hugging Face cache, if there.
    Asking the Hub first would cost a minute of retries on a machine without a network."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    hub = getattr(get_pretrained_cfg(name), "hf_hub_id", None)
    for filename in ("model.safetensors", "pytorch_model.bin") if hub else ():
        found = try_to_load_from_cache(hub, filename)
        if isinstance(found, str):
            return found
    return None
