"""LSKNet: Li, Hou, Wang, Gao, Xu, Yang, Li, "Large Selective Kernel Network for Remote Sensing
Object Detection", ICCV 2023 (the backbone, trained here as a classifier).

The LSK module (:class:`LargeSelectiveKernel`) builds a large receptive field from a
sequence of depthwise convs (5x5, then 7x7 with dilation 3: receptive field 23), reduces
each one's output to C/2 channels with a 1x1 conv, and selects between them spatially:
channel-wise average and max of the concatenated features give a 2-channel map, a 7x7
conv and a sigmoid turn it into one mask per branch (independent sigmoids, not a
softmax), the masked branches are summed, a 1x1 conv brings C/2 back to C, and the result
multiplies the input. The network is the VAN/MSCAN backbone of ``models/segnext.py``
(:class:`SpatialGatingNet`) with LSK as the gating unit and a single-conv stem.

32x32 inputs: the stem (7x7/4 conv in the paper) is a 3x3/1 conv, so stages run at
32/16/8/4 instead of 56/28/14/7. A depthwise conv whose span (k-1)d+1 exceeds 2H-1 has taps
that only ever see zero padding, so the kernel sequence is sized per stage:
(5,d1)->(7,d3) (receptive field 23, the paper's) on 32x32 and 16x16; (5,d1)->(7,d2)
(span 13 <= 15, receptive field 17, still covering the map from any position) on 8x8;
(3,d1)->(3,d2) (receptive field 7 = 2H-1) on 4x4. The 7x7 selection conv fits 4x4 (7 = 2H-1).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import torch
import torch.nn as nn

from .layers.factory import register_attention
from .registry import register_model
from .segnext import SpatialGatingNet, depthwise


@register_attention("lsk")
class LargeSelectiveKernel(nn.Module):
    """LSK: sequential depthwise convs ``kernels`` = ((k, dilation), ...), spatial selection, ``x * proj(...)``.

    ``select`` outputs the masks, shape (N, len(kernels), H, W), each in (0, 1).
    Usable as a ResNet attention (``attention="lsk"``).
    """

    def __init__(self, channels: int, kernels: Sequence[Sequence[int]] = ((5, 1), (7, 3)), squeeze_kernel: int = 7):
        super().__init__()
        self.kernels = tuple((int(k), int(d)) for k, d in kernels)
        self.convs = nn.ModuleList(depthwise(channels, k, d) for k, d in self.kernels)
        self.reduce = nn.ModuleList(nn.Conv2d(channels, channels // 2, 1) for _ in self.kernels)
        self.select = nn.Sequential(
            nn.Conv2d(2, len(self.kernels), squeeze_kernel, padding=squeeze_kernel // 2), nn.Sigmoid()
        )
        self.proj = nn.Conv2d(channels // 2, channels, 1)

    @property
    def receptive_field(self) -> int:
        """Receptive field of the depthwise sequence: 1 + sum (k_i - 1) * d_i."""
        return 1 + sum((k - 1) * d for k, d in self.kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, u = [], x
        for conv, reduce in zip(self.convs, self.reduce, strict=True):
            u = conv(u)
            feats.append(reduce(u))
        cat = torch.cat(feats, dim=1)
        masks = self.select(torch.cat([cat.mean(dim=1, keepdim=True), cat.amax(dim=1, keepdim=True)], dim=1))
        selected = sum(f * masks[:, i:i + 1] for i, f in enumerate(feats))
        return x * self.proj(selected)


# (kernel, dilation) sequences per stage at 32/16/8/4 maps: every span (k-1)d+1 <= 2H-1.
CIFAR_LSK_KERNELS = (((5, 1), (7, 3)), ((5, 1), (7, 3)), ((5, 1), (7, 2)), ((3, 1), (3, 2)))


def lsknet(
    num_classes: int = 100,
    depths: Sequence[int] = (3, 3, 5, 2),
    dims: Sequence[int] = (32, 64, 160, 256),
    mlp_ratios: Sequence[float] = (8, 8, 4, 4),
    kernels: Sequence[Sequence[Sequence[int]]] = CIFAR_LSK_KERNELS,
    squeeze_kernel: int = 7,
    **kwargs: Any,
) -> SpatialGatingNet:
    """LSKNet for 32x32 images (defaults: LSKNet-T); ``kernels`` gives each stage's (k, dilation) sequence."""
    units = [partial(LargeSelectiveKernel, kernels=ks, squeeze_kernel=squeeze_kernel) for ks in kernels]
    return SpatialGatingNet(depths, dims, mlp_ratios, units, num_classes=num_classes, stem="conv", **kwargs)


_PAPER = "Large Selective Kernel Network for Remote Sensing Object Detection (Li et al., 2023)"
_ADAPT = (
    "Stem 3x3/1 conv + BN instead of 7x7/4, so stages run at 32/16/8/4 instead of 56/28/14/7. LSK depthwise "
    "(kernel, dilation) sequence per stage (5,1)->(7,3) [RF 23] on 32 and 16, (5,1)->(7,2) [RF 17] on 8x8, "
    "(3,1)->(3,2) [RF 7] on 4x4: a dilated 7x7 with d=3 spans 19 > 2H-1 = 15 on 8x8, so its outer taps would "
    "only see padding. Otherwise the paper's block (VAN-style: BN, layer scale 1e-2, MLP with 3x3 depthwise "
    "conv, LN after each stage); average pool + linear head."
)
_RECIPE = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "warmup_epochs": 10, "label_smoothing": 0.1}

register_model(
    lsknet, name="lsknet_mini", family="lsknet", paper=_PAPER, tier="small",
    arch=("stem 3x3/1 conv 16 ch + BN; depths 3/3/5/2 at dims 16/32/80/128, MLP ratios 8/8/4/4; stages on "
          "32/16/8/4 maps; LSK (k,d) sequences (5,1)(7,3), (5,1)(7,3), (5,1)(7,2), (3,1)(3,2), 7x7 selection "
          "conv; 3x3/2 conv + BN between stages; LN after each stage; avg pool, linear head"),
    adaptation=_ADAPT + " LSKNet-T at half width for the small tier.",
    recipe=_RECIPE, dims=(16, 32, 80, 128), drop_path_rate=0.05,
)

register_model(
    lsknet, name="lsknet_t", family="lsknet", paper=_PAPER, tier="standard",
    arch=("LSKNet-T: stem 3x3/1 conv 32 ch + BN; depths 3/3/5/2 at dims 32/64/160/256, MLP ratios 8/8/4/4; "
          "stages on 32/16/8/4 maps; LSK (k,d) sequences (5,1)(7,3), (5,1)(7,3), (5,1)(7,2), (3,1)(3,2), 7x7 "
          "selection conv; 3x3/2 conv + BN between stages; LN after each stage; avg pool, linear head"),
    adaptation=_ADAPT + " LSKNet-T's widths and depths unchanged.",
    recipe=_RECIPE, drop_path_rate=0.1,
)
