"""Model zoo: every network is built here from scratch and registered by name.

>>> from cifarlab.models import create, list_models
>>> model = create("resnet20", num_classes=100)
"""

from .complexity import count_macs, count_params
from .registry import (
    ModelEntry,
    aliases,
    build_model,
    create,
    get_entry,
    list_models,
    register_alias,
    register_model,
)

# Importing a family's file registers its networks.
from . import (  # noqa: E402,F401  isort: skip
    resnet, attention_resnets, ghost, resnext, res2net, resnest, csp, convnext,
    hornet, segnext, lsknet, edgenext, coatnet, mlp_mixer, vit,
)

# Family names (``convnext``, ``vit``, ...) resolve to each family's standard-tier network.
for _alias, _target in {
    "convnext": "convnext_tiny_cifar", "csp_resnet": "csp_resnet18", "resnest": "resnest29_2s1x64d",
    "res2net": "res2net29_26w4s", "res2net_ca": "ca_res2net29_26w4s", "resnext29": "resnext29_2x64d",
    "hornet": "hornet_t", "segnext_mscan": "segnext_mscan_t", "lsknet": "lsknet_t", "coatnet": "coatnet_0",
    "mlp_mixer": "mixer_s_p4", "vit": "vit_s_p4", "edgenext": "edgenext_s",
}.items():
    register_alias(_alias, _target)


__all__ = [
    "ModelEntry", "aliases", "build_model", "count_macs", "count_params", "create", "get_entry", "list_models",
    "register_alias", "register_model",
]
