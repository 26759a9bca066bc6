"""CIFAR ResNets with channel attention in every BasicBlock: ECA, SE and Coordinate Attention.

These are configured entries of the baseline constructors in ``resnet.py`` (no
copied network): ``attention="eca"|"se"|"ca"`` inserts the module from
``layers/attention.py`` into every BasicBlock on the residual branch, after the
second conv unit and before the addition (``attention_position="before"``, the
placement of the three papers); ``model_kwargs={"attention_position": "after"}``
moves it onto the block output, after addition and ReLU. ``attention_kwargs``
reach the module (e.g. ``{"kernel_size": 5}`` for a fixed ECA k, ``{"gate":
"hardsigmoid"}``). The CBAM channel module ("cbam_channel") is used the same way
through ``model_kwargs`` on any ResNet entry.
"""

from __future__ import annotations

from .registry import register_model
from .resnet import describe_resnet, resnet, wide_resnet18

_ATTENTIONS = {
    # name: (family, paper, what is inserted, adaptation on ResNet-20/56, adaptation on the wide ResNet-18)
    "eca": (
        "eca",
        "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks (Wang et al., 2020)",
        "ECA (GAP -> 1-D conv of adaptive size k across channels, no bias -> sigmoid)",
        "Adaptive k = |log2(C)/2 + 1/2|_odd as the official code computes it, which is k = 3 on all three "
        "16/32/64-channel stages. Otherwise as in the paper.",
        "Adaptive k = |log2(C)/2 + 1/2|_odd as the official code computes it: k = 3/5/5/5 on the "
        "64/128/256/512-channel stages. Otherwise as in the paper.",
    ),
    "se": (
        "se",
        "Squeeze-and-Excitation Networks (Hu et al., 2018)",
        "SE (GAP -> FC C->max(C//16, 4) -> ReLU -> FC -> sigmoid)",
        "Reduction r = 16 with a floor of 4 hidden units (C//16 alone would be 1/2/4 on the 16/32/64-channel "
        "stages): hidden 4/4/4.",
        "Reduction r = 16 (floor of 4 hidden units, not reached): hidden 4/8/16/32.",
    ),
    "ca": (
        "coordatt",
        "Coordinate Attention for Efficient Mobile Network Design (Hou et al., 2021)",
        "Coordinate Attention (H- and W-strip pooling -> shared 1x1 conv to max(8, C//32) -> BN -> h-swish "
        "-> per-direction 1x1 convs -> sigmoid gates)",
        "The paper's r = 32 with its floor of 8: 8 reduced channels on every stage; strips 32/16/8 long.",
        "The paper's r = 32 with its floor of 8: 8/8/8/16 reduced channels; strips 32/16/8/4 long.",
    ),
}

# Every entry, by its registry name: (name, attention, depth of the CIFAR ResNet or None for the wide ResNet-18).
_ENTRIES = (
    ("eca_resnet20", "eca", 20), ("eca_resnet56", "eca", 56), ("eca_resnet18", "eca", None),
    ("se_resnet20", "se", 20), ("se_resnet56", "se", 56), ("se_resnet18", "se", None),
    ("ca_resnet20", "ca", 20), ("ca_resnet56", "ca", 56), ("ca_resnet18", "ca", None),
)

for _name, _attn, _depth in _ENTRIES:
    _family, _paper, _module, _small_adapt, _wide_adapt = _ATTENTIONS[_attn]
    _arch = describe_resnet(_depth, f"{_module} in every BasicBlock, on the residual branch before the addition.")
    if _depth is None:
        register_model(wide_resnet18, name=_name, family=_family, paper=_paper, tier="standard", arch=_arch,
                       adaptation=_wide_adapt, recipe={"lr": 0.2}, attention=_attn)
    else:
        register_model(resnet, name=_name, family=_family, paper=_paper, tier="small", arch=_arch,
                       adaptation=_small_adapt, depth=_depth, attention=_attn)
