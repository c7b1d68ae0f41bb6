"""Models: small ones written here, any timm model by name, or your own class via _target_."""

from nnrecipe.models.build import build_model, init_head_bias
from nnrecipe.models.simple import MLP, ConvNet, Linear
from nnrecipe.models.timm_model import timm_model

__all__ = ["MLP", "ConvNet", "Linear", "build_model", "init_head_bias", "timm_model"]
