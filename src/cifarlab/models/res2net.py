"""Res2Net for CIFAR: Gao et al., "Res2Net: A New Multi-scale Backbone Architecture", TPAMI 2021.

The Res2Net module (§3.1) replaces a block's 3x3 convolution by hierarchical
residual-like convolutions: the input is split into s groups x1..xs of w channels;
y1 = x1, y2 = K2(x2), yi = Ki(xi + y(i-1)) for 2 < i <= s, each Ki a 3x3 conv +
BN + ReLU; the yi are concatenated and fused by a 1x1 conv. So there are s - 1
3x3 convs of w -> w channels, and the receptive field grows with i. Where the
resolution or the width changes (the official code's "stage" block) the splits do
not cascade, yi = Ki(xi) with the stride, and y1 = AvgPool3x3(x1) with the stride.
The official code passes the last split through instead of the first; the two
are the same network up to a channel permutation of the surrounding 1x1 convs.

Two blocks:
- ``Res2NetBottleneck``: the paper's block (1x1 -> Res2Net module -> 1x1), on the
  ResNeXt-29 CIFAR layout of the paper's CIFAR experiments (standard tier).
- ``Res2NetBasicBlock`` (not in the paper, which only has bottlenecks): the
  BasicBlock's first 3x3 conv is kept (it carries the stride and the width change),
  its second 3x3 conv is replaced by the Res2Net module on the block width (w =
  width / s) and the 1x1 fusion conv + BN, on the CIFAR ResNet layout (small tier).

``attention`` inserts a module from ``ATTENTION_LAYERS`` in every block, before
the addition by default (where the paper puts SE in Res2Net-SE); a Res2Net with
``attention="ca"`` is the Res2Net + Coordinate Attention model (``ca_res2net*``).
The bottleneck network zero-initialises each block's last BN scale
(``zero_init_last``, see ``resnext.py``); the BasicBlock one does not, like the
CIFAR ResNet baseline it is compared with.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch
import torch.nn as nn

from .. import CifarlabError
from .layers.bottleneck import (
    CifarStageNet,
    ResidualBlock,
    projection_shortcut,
    resnext29_blocks,
    uniform_stage_net,
)
from .layers.conv import ConvNormAct
from .registry import register_model
from .resnet import ShortcutA


class Res2NetConv(nn.Module):
    """The hierarchical 3x3 convolutions of the Res2Net module on ``scale * width`` channels.

    ``stage=False``: y1 = x1, y2 = K2(x2), yi = Ki(xi + y(i-1)); ``stage=True``: yi =
    Ki(xi) with ``stride`` and y1 = AvgPool3x3(x1) with ``stride`` (padding counted, as
    in the official code). ``groups`` makes each Ki a grouped conv (Res2NeXt).
    """

    def __init__(self, width: int, scale: int = 4, stride: int = 1, groups: int = 1, stage: bool = False,
                 act: str = "relu"):
        super().__init__()
        if scale < 2:
            raise CifarlabError(f"Res2Net scale must be >= 2 (scale 1 is a plain 3x3 conv), got {scale}")
        if stride != 1 and not stage:
            raise CifarlabError("a strided Res2Net module must be a stage module (stage=True)")
        self.width = width
        self.stage = stage
        self.convs = nn.ModuleList(
            ConvNormAct(width, width, stride, kernel_size=3, groups=groups, act_layer=act) for _ in range(scale - 1)
        )
        self.pool = nn.AvgPool2d(3, stride, padding=1) if stage else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        splits = x.split(self.width, dim=1)
        outs = [self.pool(splits[0])]
        for i, (xi, conv) in enumerate(zip(splits[1:], self.convs, strict=True)):
            outs.append(conv(xi if self.stage or i == 0 else xi + outs[-1]))
        return torch.cat(outs, dim=1)


class Res2NetBottleneck(ResidualBlock):
    """1x1 to ``scale * width`` -> Res2Net module (stride, ``groups``) -> 1x1 to ``out_ch``; 1x1-conv shortcut.

    Gao et al., "Res2Net: A New Multi-scale Backbone Architecture", TPAMI 2021 (Fig. 2b).
    A stage module is used where the stride or the width changes.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        width: int = 26,
        scale: int = 4,
        groups: int = 1,
        attention: str | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        attention_position: str = "before",
        act: str = "relu",
    ):
        super().__init__(out_ch, projection_shortcut(in_ch, out_ch, stride),
                         attention, attention_kwargs, attention_position, act)
        stage = stride > 1 or in_ch != out_ch
        self.conv1 = ConvNormAct(in_ch, width * scale, kernel_size=1, act_layer=act)
        self.conv2 = Res2NetConv(width, scale, stride, groups, stage, act)
        self.conv3 = ConvNormAct(width * scale, out_ch, act=False, kernel_size=1)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(self.conv3(self.conv2(self.conv1(x))), x)


class Res2NetBasicBlock(ResidualBlock):
    """3x3 conv (stride) -> Res2Net module on ``out_ch`` channels (w = out_ch / scale) -> 1x1 fusion.

    A BasicBlock form of Gao et al.'s Res2Net module (the paper has bottlenecks only):
    the second 3x3 conv of the BasicBlock becomes s - 1 hierarchical 3x3 convs of w
    channels plus the 1x1 fusion conv + BN, so it costs 9 (s-1) w^2 + s^2 w^2 weights
    instead of 9 s^2 w^2. Shortcut: option A (zero-pad) or B (1x1 conv), as in the CIFAR ResNet.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        scale: int = 4,
        shortcut: Literal["A", "B"] = "A",
        attention: str | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        attention_position: str = "before",
        act: str = "relu",
    ):
        if out_ch % scale:
            raise CifarlabError(f"Res2Net basic block: width {out_ch} is not divisible by scale {scale}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        same = stride == 1 and in_ch == out_ch
        sc = nn.Identity() if same else ShortcutA(in_ch, out_ch, stride) if shortcut == "A" else \
            projection_shortcut(in_ch, out_ch, stride)
        super().__init__(out_ch, sc, attention, attention_kwargs, attention_position, act)
        self.conv1 = ConvNormAct(in_ch, out_ch, stride, kernel_size=3, act_layer=act)
        self.conv2 = Res2NetConv(out_ch // scale, scale, act=act)
        self.fuse = ConvNormAct(out_ch, out_ch, act=False, kernel_size=1)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.fuse.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(self.fuse(self.conv2(self.conv1(x))), x)


def res2net(
    depth: int = 56,
    scale: int = 4,
    widths: Sequence[int] = (16, 32, 64),
    num_classes: int = 100,
    shortcut: Literal["A", "B"] = "A",
    attention: str | None = None,
    attention_kwargs: dict[str, Any] | None = None,
    attention_position: str = "before",
    act: str = "relu",
    global_pool: str = "avg",
    zero_init_last: bool = False,
) -> CifarStageNet:
    """CIFAR ResNet-``depth`` layout (6n+2, stem = ``widths[0]``) with Res2Net BasicBlocks of scale ``scale``."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"CIFAR Res2Net (basic) depth must be 6n+2 (20, 32, 44, 56...), got {depth}")
    n = (depth - 2) // 6

    def make_block(in_ch: int, out_ch: int, stride: int, stage: int) -> Res2NetBasicBlock:
        return Res2NetBasicBlock(in_ch, out_ch, stride, scale, shortcut, attention, attention_kwargs,
                                 attention_position, act)

    return uniform_stage_net(make_block, n, widths, widths[0], num_classes, act, global_pool, zero_init_last)


def res2net_bottleneck(
    depth: int = 29,
    scale: int = 4,
    base_width: int = 26,
    cardinality: int = 1,
    widths: Sequence[int] = (256, 512, 1024),
    stem_width: int = 64,
    num_classes: int = 100,
    attention: str | None = None,
    attention_kwargs: dict[str, Any] | None = None,
    attention_position: str = "before",
    act: str = "relu",
    global_pool: str = "avg",
    zero_init_last: bool = True,
) -> CifarStageNet:
    """Res2Net(eXt)-``depth`` on the CIFAR ResNeXt-29 layout (9n+2).

    Split width ``w = floor(out/4 * base_width/64) * cardinality`` per stage (the
    official ``baseWidth`` convention: 26w x 4s gives 104 channels in the module where
    the ResNet bottleneck has 64).
    """
    n = resnext29_blocks(depth, "Res2Net (bottleneck)")

    def make_block(in_ch: int, out_ch: int, stride: int, stage: int) -> Res2NetBottleneck:
        width = math.floor(out_ch // 4 * base_width / 64) * cardinality
        return Res2NetBottleneck(in_ch, out_ch, stride, width, scale, cardinality, attention, attention_kwargs,
                                 attention_position, act)

    return uniform_stage_net(make_block, n, widths, stem_width, num_classes, act, global_pool, zero_init_last)


_PAPER = "Res2Net: A New Multi-scale Backbone Architecture (Gao et al., 2021)"
_BASIC_ARCH = ("CIFAR ResNet-56 layout: 3x3 stem 16 ch, no max-pool; 3 stages of 9 Res2Net BasicBlocks "
               "(3x3 conv -> Res2Net module, scale 4, splits of 4/8/16 ch -> 1x1 fusion) at 16/32/64 ch on "
               "32/16/8 maps; stride 2 on the first 3x3 conv of stages 2-3; option-A shortcuts; global avg pool; "
               "linear head{extra}")
_BASIC_ADAPT = ("The paper has only bottleneck Res2Nets; here the BasicBlock's second 3x3 conv is replaced by the "
                "Res2Net module (s - 1 = 3 hierarchical 3x3 convs) + 1x1 fusion, which cuts that conv's weights "
                "from 9 s^2 w^2 to (9 (s-1) + s^2) w^2; depth 56 (not 20) to land in the small tier "
                "(Res2Net-20 has only ~0.19 M params). Nothing else changes for 32x32.{extra}")

register_model(
    res2net, name="res2net56", family="res2net", paper=_PAPER, tier="small",
    arch=_BASIC_ARCH.format(extra=""), adaptation=_BASIC_ADAPT.format(extra=""),
    depth=56, scale=4,
)

register_model(
    res2net, name="ca_res2net56", family="res2net_ca",
    paper=_PAPER + " + Coordinate Attention for Efficient Mobile Network Design (Hou et al., 2021)", tier="small",
    arch=_BASIC_ARCH.format(extra=("; Coordinate Attention (layers 'ca') on every block's residual branch after "
                                   "the 1x1 fusion, before the addition")),
    adaptation=_BASIC_ADAPT.format(extra=(" CA sits where the Res2Net paper puts SE (before the residual "
                                          "addition); its strips are 32/16/8 long.")),
    depth=56, scale=4, attention="ca",
)

_BOTTLENECK_ARCH = ("Res2Net-29 (26w x 4s) on the CIFAR ResNeXt-29 layout: 3x3 stem 64 ch, no max-pool; 3 stages of "
                    "3 Res2Net bottlenecks, outputs 256/512/1024 ch on 32/16/8 maps, Res2Net module on 4 splits of "
                    "26/52/104 ch; stride 2 in the module of the first block of stages 2-3 (stage module: strided "
                    "splits, avg-pooled first split); 1x1-conv shortcuts; global avg pool; linear head{extra}")
_BOTTLENECK_ADAPT = ("The paper's CIFAR experiments use ResNeXt-29 as the base (Res2NeXt-29 with 6-8 cardinal groups, "
                     "~34-37 M params, above the 30 M standard tier); this is the cardinality-1 Res2Net with the "
                     "paper's default 26w x 4s split widths on that layout (5.0 M params); last BN of each block "
                     "zero-initialised.{extra}")

register_model(
    res2net_bottleneck, name="res2net29_26w4s", family="res2net", paper=_PAPER, tier="standard",
    arch=_BOTTLENECK_ARCH.format(extra=""), adaptation=_BOTTLENECK_ADAPT.format(extra=""),
    recipe={"lr": 0.2},
    depth=29, scale=4, base_width=26,
)

register_model(
    res2net_bottleneck, name="ca_res2net29_26w4s", family="res2net_ca",
    paper=_PAPER + " + Coordinate Attention for Efficient Mobile Network Design (Hou et al., 2021)", tier="standard",
    arch=_BOTTLENECK_ARCH.format(extra=("; Coordinate Attention (layers 'ca') on every block's residual branch "
                                        "after the last 1x1 conv, before the addition")),
    adaptation=_BOTTLENECK_ADAPT.format(extra=(" CA sits where the Res2Net paper puts SE (before the residual "
                                               "addition); its strips are 32/16/8 long.")),
    recipe={"lr": 0.2},
    depth=29, scale=4, base_width=26, attention="ca",
)
