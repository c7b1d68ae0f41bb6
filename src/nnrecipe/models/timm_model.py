"""Any timm model by name, with a clear error for names timm does not know."""

from __future__ import annotations

import difflib

from torch import nn

from nnrecipe.errors import UserError


def timm_model(
    name: str, num_classes: int, in_chans: int = 3, pretrained: bool = False, **kwargs
) -> nn.Module:
    import timm  # slow to import: only when a timm model is asked for

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UserError(
            f"timm has no model named {name!r}.{hint} "
            f"List them with: python -c \"import timm; print(timm.list_models('*{name[:4]}*'))\""
        )
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
            f"could not load pretrained weights for {name!r} ({type(e).__name__}: {e}). Without "
            f"network access, put them in the Hugging Face cache (HF_HOME) on a machine that has "
            f"it, or set model.pretrained=false."
        ) from e
