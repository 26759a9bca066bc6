"""SegNeXt's MSCAN: Guo, Lu, Hou, Liu, Cheng, Hu, "SegNeXt: Rethinking Convolutional Attention
Design for Semantic Segmentation", NeurIPS 2022 (the encoder, trained here as a classifier).

Multi-scale convolutional attention (:class:`MultiScaleConvAttention`, MSCA): a 5x5
depthwise conv, three branches of depthwise strip convs (1xk then kx1 for k = 7, 11, 21)
summed with it, a 1x1 conv, and the result multiplies the input:
``Out = Conv1x1(DW(F) + sum_i Strip_i(DW(F))) * F``.

The network around it (:class:`SpatialGatingNet`) is the VAN/MSCAN backbone, shared with
LSKNet (``models/lsknet.py``), which only swaps the gating unit and the stem:
a block is ``x + ls1 * Attn(BN(x))`` with ``Attn(x) = x + proj2(unit(GELU(proj1(x))))``,
then ``x + ls2 * MLP(BN(x))`` with the MLP 1x1 -> 3x3 depthwise -> GELU -> 1x1; a 3x3/2
conv + BN between stages; LayerNorm after every stage; average pool and a linear head.

32x32 inputs: MSCAN's stem (two 3x3/2 convs, stride 4) runs at stride 1, so the stages
are at 32/16/8/4 instead of 56/28/14/7. Strips longer than 2H-1 only ever see zero
padding at their ends, so the strip lengths are sized per stage: the paper's 7/11/21 on
the 32x32 and 16x16 maps, 5/9/15 on 8x8 (the longest capped at 2H-1 = 15, the other two
shrunk so the three scales stay distinct), 3/5/7 on 4x4 (2H-1 = 7).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from .. import CifarlabError
from .layers.factory import register_attention
from .layers.norm import DropPath, LayerNorm2d, drop_path_rates
from .registry import register_model


def depthwise(channels: int, kernel_size: int | tuple[int, int], dilation: int = 1) -> nn.Conv2d:
    """A depthwise conv (with bias) that keeps the spatial size."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    padding = ((kh - 1) * dilation // 2, (kw - 1) * dilation // 2)
    return nn.Conv2d(channels, channels, (kh, kw), padding=padding, dilation=dilation, groups=channels)


@register_attention("msca")
class MultiScaleConvAttention(nn.Module):
    """MSCA: ``proj(dw(x) + sum_k strip_k(dw(x))) * x``; each strip is a 1xk then kx1 depthwise conv.

    Usable as a ResNet attention (``attention="msca"``): it maps (N, C, H, W) to the same shape.
    """

    def __init__(self, channels: int, strip_sizes: Sequence[int] = (7, 11, 21), kernel_size: int = 5):
        super().__init__()
        self.conv0 = depthwise(channels, kernel_size)
        self.strips = nn.ModuleList(
            nn.Sequential(depthwise(channels, (1, k)), depthwise(channels, (k, 1))) for k in strip_sizes
        )
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.conv0(x)
        attn = attn + sum(strip(attn) for strip in self.strips)
        return self.proj(attn) * x


class SpatialGatingAttention(nn.Module):
    """VAN's attention sub-layer: ``x + proj2(unit(GELU(proj1(x))))`` with a gating ``unit`` (MSCA, LSK)."""

    def __init__(self, dim: int, unit: nn.Module):
        super().__init__()
        self.proj1 = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()
        self.unit = unit
        self.proj2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj2(self.unit(self.act(self.proj1(x))))


class ConvMlp(nn.Module):
    """1x1 conv to ``hidden`` -> 3x3 depthwise conv -> GELU -> 1x1 conv back (VAN/MSCAN's MLP)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = depthwise(hidden, 3)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class SpatialGatingBlock(nn.Module):
    """``x + ls1 * Attn(BN(x))`` then ``x + ls2 * MLP(BN(x))``; layer scale initialised to 1e-2."""

    def __init__(self, dim: int, unit: nn.Module, mlp_ratio: float = 4.0, ls_init: float = 1e-2,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = SpatialGatingAttention(dim, unit)
        self.ls1 = nn.Parameter(torch.full((dim,), ls_init))
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self.ls2 = nn.Parameter(torch.full((dim,), ls_init))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1[:, None, None] * self.attn(self.norm1(x)))
        return x + self.drop_path(self.ls2[:, None, None] * self.mlp(self.norm2(x)))


STEMS = ("double_conv", "conv")


class SpatialGatingNet(nn.Module):
    """The VAN-style four-stage backbone shared by MSCAN and LSKNet.

    ``units`` holds one factory per stage, ``unit(dim) -> nn.Module``, building that
    stage's gating unit. ``stem="double_conv"``: 3x3 conv to dims[0]/2 + BN + GELU + 3x3
    conv + BN (MSCAN); ``"conv"``: one 3x3 conv + BN (LSKNet's patch embedding). Both at
    stride 1. Stages after the first start with a 3x3/2 conv + BN.
    """

    def __init__(
        self,
        depths: Sequence[int],
        dims: Sequence[int],
        mlp_ratios: Sequence[float],
        units: Sequence[Callable[[int], nn.Module]],
        num_classes: int = 100,
        stem: str = "double_conv",
        ls_init: float = 1e-2,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if not len(depths) == len(dims) == len(mlp_ratios) == len(units):
            raise ValueError("depths, dims, mlp_ratios and units need one entry per stage")
        if stem == "double_conv":
            self.stem = nn.Sequential(
                nn.Conv2d(3, dims[0] // 2, 3, padding=1), nn.BatchNorm2d(dims[0] // 2), nn.GELU(),
                nn.Conv2d(dims[0] // 2, dims[0], 3, padding=1), nn.BatchNorm2d(dims[0]),
            )
        elif stem == "conv":
            self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 3, padding=1), nn.BatchNorm2d(dims[0]))
        else:
            raise CifarlabError(f"unknown stem {stem!r}; choose from {list(STEMS)}")
        rates = drop_path_rates(drop_path_rate, depths)
        stages = []
        for i, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
            down = (nn.Identity() if i == 0 else
                    nn.Sequential(nn.Conv2d(dims[i - 1], dim, 3, 2, padding=1), nn.BatchNorm2d(dim)))
            blocks = [SpatialGatingBlock(dim, units[i](dim), mlp_ratios[i], ls_init, rates[i][j]) for j in range(depth)]
            stages.append(nn.Sequential(down, *blocks, LayerNorm2d(dim)))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(dims[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """VAN's initialisation: convs N(0, sqrt(2 / fan_out)), linear trunc-normal std 0.02, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# Strip lengths per stage at 32/16/8/4 maps: the longest capped at 2H-1, the scales kept distinct.
CIFAR_STRIP_SIZES = ((7, 11, 21), (7, 11, 21), (5, 9, 15), (3, 5, 7))


def segnext_mscan(
    num_classes: int = 100,
    depths: Sequence[int] = (3, 3, 5, 2),
    dims: Sequence[int] = (32, 64, 160, 256),
    mlp_ratios: Sequence[float] = (8, 8, 4, 4),
    strip_sizes: Sequence[Sequence[int]] = CIFAR_STRIP_SIZES,
    **kwargs: Any,
) -> SpatialGatingNet:
    """MSCAN for 32x32 images (defaults: MSCAN-T); ``strip_sizes`` gives each stage's three strip lengths."""
    units = [partial(MultiScaleConvAttention, strip_sizes=tuple(s)) for s in strip_sizes]
    return SpatialGatingNet(depths, dims, mlp_ratios, units, num_classes=num_classes, stem="double_conv", **kwargs)


_PAPER = "SegNeXt: Rethinking Convolutional Attention Design for Semantic Segmentation (Guo et al., 2022)"
_ADAPT = (
    "Stem (two 3x3 convs) at stride 1 instead of 2+2, so stages run at 32/16/8/4 instead of 56/28/14/7. "
    "MSCA strip lengths per stage 7/11/21, 7/11/21, 5/9/15, 3/5/7: a strip longer than 2H-1 has taps that "
    "only ever see zero padding, so on 8x8 the longest is 15 and on 4x4 it is 7, the others shrunk to keep "
    "three distinct scales; the 5x5 depthwise conv is kept everywhere (5 <= 2H-1). Otherwise the paper's "
    "block: BN, layer scale 1e-2, MLP with 3x3 depthwise conv, LN after each stage; average pool + linear head."
)
_RECIPE = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "warmup_epochs": 10, "label_smoothing": 0.1}

register_model(
    segnext_mscan, name="segnext_mscan_mini", family="segnext_mscan", paper=_PAPER, tier="small",
    arch=("stem 3x3 conv 8 ch + BN + GELU + 3x3 conv 16 ch + BN, stride 1; depths 3/3/5/2 at dims 16/32/80/128, "
          "MLP ratios 8/8/4/4; stages on 32/16/8/4 maps; MSCA strips 7/11/21, 7/11/21, 5/9/15, 3/5/7; "
          "3x3/2 conv + BN between stages; LN after each stage; avg pool, linear head"),
    adaptation=_ADAPT + " MSCAN-T at half width for the small tier.",
    recipe=_RECIPE, dims=(16, 32, 80, 128), drop_path_rate=0.05,
)

register_model(
    segnext_mscan, name="segnext_mscan_t", family="segnext_mscan", paper=_PAPER, tier="standard",
    arch=("MSCAN-T: stem 3x3 conv 16 ch + BN + GELU + 3x3 conv 32 ch + BN, stride 1; depths 3/3/5/2 at dims "
          "32/64/160/256, MLP ratios 8/8/4/4; stages on 32/16/8/4 maps; MSCA strips 7/11/21, 7/11/21, 5/9/15, "
          "3/5/7; 3x3/2 conv + BN between stages; LN after each stage; avg pool, linear head"),
    adaptation=_ADAPT + " MSCAN-T's widths and depths unchanged.",
    recipe=_RECIPE, drop_path_rate=0.1,
)
