"""Model zoo: every network is built here from scratch and registered by name.

>>> from cifarlab.models import create, list_models
>>> model = create("resnet20", num_classes=100)
"""

from .complexity import count_macs, count_params
from .registry import ModelEntry, create, get_entry, list_models, register_model

# Importing a family's file registers its networks.
from . import (  # noqa: E402,F401  isort: skip
    resnet, attention_resnets, ghost, resnext, res2net, resnest, csp, convnext,
    hornet, segnext, lsknet, edgenext, coatnet, mlp_mixer, vit,
)

__all__ = ["ModelEntry", "count_macs", "count_params", "create", "get_entry", "list_models", "register_model"]
