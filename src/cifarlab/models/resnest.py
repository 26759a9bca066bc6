"""ResNeSt for CIFAR: Zhang et al., "ResNeSt: Split-Attention Networks", CVPR Workshops 2022.

The ResNeSt block (§3) is a bottleneck whose 3x3 conv + BN + ReLU is a split-attention
conv (``layers.split_attention.SplitAttention``, radix R, cardinality K): 1x1 ->
split attention -> 1x1, with the paper's ResNet-D tweaks: in a strided block the
split attention runs at stride 1 and a 3x3 average pool with the stride follows it
("avd"), and the projection shortcut average-pools (2x2) before its 1x1 conv
("avg_down"). Name convention of the paper: ``2s1x64d`` = radix 2, cardinality 1,
width 64 per cardinal group in the first stage.

The network is laid out like the CIFAR ResNeXt-29 (3x3 stem, three stages of three
blocks on 32/16/8 maps, widths doubling); the paper's deep 3-conv stem with stride 2
and max-pool are ImageNet downsampling and are replaced by one 3x3 stride-1 conv.
Each block's last BN scale starts at zero (``zero_init_last``, see ``resnext.py``).
``attention`` inserts an extra module from ``ATTENTION_LAYERS`` before the addition,
as in ``resnet.BasicBlock``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from .layers.bottleneck import (
    CifarStageNet,
    ResidualBlock,
    projection_shortcut,
    resnext29_blocks,
    uniform_stage_net,
)
from .layers.conv import ConvNormAct
from .layers.split_attention import SplitAttention
from .registry import register_model


class ResNeStBottleneck(ResidualBlock):
    """1x1 to ``mid_ch`` -> SplitAttention 3x3 (radix, groups) -> [3x3 avg pool, stride] -> 1x1 to ``out_ch``.

    Zhang et al., "ResNeSt: Split-Attention Networks", 2022 (Fig. 2 right, with the
    avd and avg-down ResNet-D tweaks of their ResNeSt-50; ``avd=False`` strides the
    split-attention conv instead, ``avg_down=False`` uses a strided 1x1 shortcut).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        mid_ch: int | None = None,
        radix: int = 2,
        groups: int = 1,
        avd: bool = True,
        avg_down: bool = True,
        attention: str | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        attention_position: str = "before",
        act: str = "relu",
    ):
        super().__init__(out_ch, projection_shortcut(in_ch, out_ch, stride, avg_down),
                         attention, attention_kwargs, attention_position, act)
        mid_ch = mid_ch or out_ch // 4
        pool_down = avd and stride > 1
        self.conv1 = ConvNormAct(in_ch, mid_ch, kernel_size=1, act_layer=act)
        self.conv2 = SplitAttention(mid_ch, mid_ch, 3, stride=1 if pool_down else stride, groups=groups,
                                    radix=radix, act=act)
        self.avd = nn.AvgPool2d(3, stride, padding=1) if pool_down else nn.Identity()
        self.conv3 = ConvNormAct(mid_ch, out_ch, act=False, kernel_size=1)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(self.conv3(self.avd(self.conv2(self.conv1(x)))), x)


def resnest(
    depth: int = 29,
    radix: int = 2,
    cardinality: int = 1,
    group_width: int = 64,
    widths: Sequence[int] = (256, 512, 1024),
    stem_width: int = 64,
    num_classes: int = 100,
    avd: bool = True,
    avg_down: bool = True,
    attention: str | None = None,
    attention_kwargs: dict[str, Any] | None = None,
    attention_position: str = "before",
    act: str = "relu",
    global_pool: str = "avg",
    zero_init_last: bool = True,
) -> CifarStageNet:
    """CIFAR ResNeSt-``depth`` (9n+2), ``{radix}s{cardinality}x{group_width}d``; block width K*d*2**stage."""
    n = resnext29_blocks(depth, "ResNeSt")

    def make_block(in_ch: int, out_ch: int, stride: int, stage: int) -> ResNeStBottleneck:
        return ResNeStBottleneck(in_ch, out_ch, stride, cardinality * group_width * 2 ** stage, radix, cardinality,
                                 avd, avg_down, attention, attention_kwargs, attention_position, act)

    return uniform_stage_net(make_block, n, widths, stem_width, num_classes, act, global_pool, zero_init_last)


_PAPER = "ResNeSt: Split-Attention Networks (Zhang et al., 2022)"
_ARCH = ("ResNeSt-29 ({cfg}): 3x3 stem {stem} ch, no max-pool; 3 stages of 3 split-attention bottlenecks, "
         "outputs {outs} ch on 32/16/8 maps, split attention (radix 2, cardinality 1, fc1 width max(C*R/4, 32)) "
         "at widths {mids}; stages 2-3 downsample with a 3x3 avg pool after the split attention (avd) and "
         "avg-pool + 1x1 conv shortcuts (avg_down); global avg pool; linear head")
_ADAPT = ("ImageNet ResNeSt's deep stem (three 3x3 convs, stride 2) and max-pool replaced by one 3x3 stride-1 "
          "conv; three stages of three blocks on the CIFAR ResNeXt-29 layout (32/16/8 maps) instead of four "
          "ImageNet stages{extra}. Split attention, avd and avg-down as in ResNeSt-50; last BN of each block "
          "zero-initialised.")

register_model(
    resnest, name="resnest29_2s1x64d", family="resnest", paper=_PAPER, tier="standard",
    arch=_ARCH.format(cfg="2s1x64d", stem=64, outs="256/512/1024", mids="64/128/256"),
    adaptation=_ADAPT.format(extra=", with ResNeSt-50's 2s1x64d blocks"),
    recipe={"lr": 0.2},
    depth=29, radix=2, cardinality=1, group_width=64,
)

register_model(
    resnest, name="resnest29_2s1x16d", family="resnest", paper=_PAPER, tier="small",
    arch=_ARCH.format(cfg="2s1x16d", stem=32, outs="64/128/256", mids="16/32/64"),
    adaptation=_ADAPT.format(extra=", at a quarter of the standard widths (stem 32, d = 16) for the small tier; "
                                   "the fc1 floor of 32 channels makes the attention relatively large here"),
    depth=29, radix=2, cardinality=1, group_width=16, widths=(64, 128, 256), stem_width=32,
)
