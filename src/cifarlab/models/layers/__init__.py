"""Reusable blocks. Each is a plain ``nn.Module`` usable outside cifarlab's networks.

Two small name tables let a network take a block by name from a config:
``ATTENTION_LAYERS`` (channel/spatial attention inserted into a residual block,
signature ``cls(channels, **kwargs)``) and ``CONV_LAYERS`` (a conv + norm unit that
replaces a 3x3 convolution, signature ``cls(in_ch, out_ch, stride=1, act=True, **kwargs)``).
"""

from .activations import get_act_layer
from .factory import ATTENTION_LAYERS, CONV_LAYERS, create_attention, create_conv
from .pooling import GeneralizedMeanPool, GlobalPool

from . import attention, ghost  # noqa: E402,F401  (fill the name tables)  isort: skip

__all__ = [
    "ATTENTION_LAYERS", "CONV_LAYERS", "create_attention", "create_conv",
    "get_act_layer", "GlobalPool", "GeneralizedMeanPool",
]
