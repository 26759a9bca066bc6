"""Ghost module, Ghost bottleneck and the GhostECA combination.

Han et al., "GhostNet: More Features from Cheap Operations", CVPR 2020.

A Ghost module replaces one convolution: an ordinary conv produces
``ceil(out / s)`` "intrinsic" maps and a cheap depthwise conv makes ``s - 1``
"ghost" maps from each, so the costly conv shrinks by about s. ``GhostModule``
and ``GhostECAModule`` are registered in ``CONV_LAYERS`` ("ghost", "ghost_eca"),
so ``CifarResNet(conv="ghost", replace="conv1"|"conv2"|"both")`` builds the
paper's Ghost-ResNets.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ... import CifarlabError
from .attention import ECA, SqueezeExcite
from .conv import ConvNormAct
from .factory import register_conv


def make_divisible(v: float, divisor: int = 4, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` (at least ``min_value``), never more than 10 % down.

    The channel rounding of MobileNetV2/GhostNet width multipliers.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


@register_conv("ghost")
class GhostModule(nn.Module):
    """Primary conv to ceil(out/s) intrinsic maps, cheap depthwise conv to (s-1)x as many, concat, slice.

    Han et al., "GhostNet: More Features from Cheap Operations", CVPR 2020 (§3.1).
    primary: ``kernel_size`` conv with ``stride`` + BN (+ act); cheap: ``dw_size``
    depthwise conv, stride 1, each intrinsic map giving s - 1 ghosts, + BN (+ act);
    ``act=False`` drops both activations (as the paper's linear projection does).
    The first ``out_ch`` of the s * ceil(out/s) maps are kept. As a drop-in for a
    3x3 conv the primary kernel stays 3x3 (the paper's Ghost-ResNet-56); the
    bottleneck uses 1x1. Nothing changes for 32x32 inputs.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, act: bool = True, ratio: int = 2,
                 dw_size: int = 3, kernel_size: int = 3, act_layer: str = "relu"):
        super().__init__()
        if ratio < 2:
            raise CifarlabError(f"Ghost ratio s must be >= 2, got {ratio}")
        self.out_ch = out_ch
        self.intrinsic_ch = math.ceil(out_ch / ratio)
        ghost_ch = self.intrinsic_ch * (ratio - 1)
        self.primary = ConvNormAct(in_ch, self.intrinsic_ch, stride, act, kernel_size, act_layer=act_layer)
        self.cheap = ConvNormAct(self.intrinsic_ch, ghost_ch, 1, act, dw_size, groups=self.intrinsic_ch,
                                 act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic = self.primary(x)
        return torch.cat([intrinsic, self.cheap(intrinsic)], dim=1)[:, : self.out_ch]


@register_conv("ghost_eca")
class GhostECAModule(GhostModule):
    """A Ghost module with ECA on its intrinsic maps or on its output (the GhostECA combination).

    ``eca_position="intrinsic"``: ECA (over ceil(out/s) channels) reweights the
    primary conv's output before the cheap op, so the ghosts are made from the
    recalibrated maps; ``"output"``: ECA over all ``out_ch`` channels after the
    concat. ``eca_kwargs`` go to :class:`~cifarlab.models.layers.attention.ECA`
    (``kernel_size``, ``gate``...). Combines Han et al. 2020 (GhostNet) with
    Wang et al. 2020 (ECA-Net); neither paper has this block.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, act: bool = True, ratio: int = 2,
                 dw_size: int = 3, kernel_size: int = 3, act_layer: str = "relu",
                 eca_position: str = "intrinsic", eca_kwargs: dict | None = None):
        super().__init__(in_ch, out_ch, stride, act, ratio, dw_size, kernel_size, act_layer)
        if eca_position not in ("intrinsic", "output"):
            raise CifarlabError(f"eca_position must be 'intrinsic' or 'output', got {eca_position!r}")
        self.eca_position = eca_position
        eca_ch = self.intrinsic_ch if eca_position == "intrinsic" else out_ch
        self.eca = ECA(eca_ch, **(eca_kwargs or {}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic = self.primary(x)
        if self.eca_position == "intrinsic":
            intrinsic = self.eca(intrinsic)
        out = torch.cat([intrinsic, self.cheap(intrinsic)], dim=1)[:, : self.out_ch]
        return self.eca(out) if self.eca_position == "output" else out


class GhostBottleneck(nn.Module):
    """Ghost module (expand, ReLU) -> [depthwise conv, stride 2] -> [SE] -> Ghost module (project, linear) + shortcut.

    Han et al., "GhostNet: More Features from Cheap Operations", CVPR 2020 (§3.2,
    Fig. 3). Both Ghost modules use 1x1 primary convs. SE as in GhostNet: hidden
    ``make_divisible(mid * se_ratio, 4)``, ReLU, hard-sigmoid gate. The shortcut is
    the identity when shapes match, else a depthwise conv (stride) + BN + 1x1 conv
    + BN. No ReLU after the addition. Nothing changes for 32x32 inputs.
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, dw_kernel_size: int = 3, stride: int = 1,
                 se_ratio: float = 0.0, ratio: int = 2, dw_size: int = 3, act_layer: str = "relu"):
        super().__init__()
        ghost_kw = dict(ratio=ratio, dw_size=dw_size, kernel_size=1, act_layer=act_layer)
        self.ghost1 = GhostModule(in_ch, mid_ch, act=True, **ghost_kw)
        self.conv_dw = (
            ConvNormAct(mid_ch, mid_ch, stride, act=False, kernel_size=dw_kernel_size, groups=mid_ch)
            if stride > 1 else nn.Identity()
        )
        self.se = (
            SqueezeExcite(mid_ch, hidden_channels=make_divisible(mid_ch * se_ratio, 4), gate="hardsigmoid")
            if se_ratio > 0 else nn.Identity()
        )
        self.ghost2 = GhostModule(mid_ch, out_ch, act=False, **ghost_kw)
        if in_ch == out_ch and stride == 1:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                ConvNormAct(in_ch, in_ch, stride, act=False, kernel_size=dw_kernel_size, groups=in_ch),
                ConvNormAct(in_ch, out_ch, 1, act=False, kernel_size=1),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ghost2(self.se(self.conv_dw(self.ghost1(x)))) + self.shortcut(x)
